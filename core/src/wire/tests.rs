use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tunnox_proto::wire as pb;

use super::*;

fn encode_all(frames: &[Frame]) -> BytesMut {
    let mut out = BytesMut::new();
    for f in frames {
        f.encode().write_to(&mut out);
    }
    out
}

fn decode_all(decoder: &mut Decoder) -> Result<Vec<Frame>, WireError> {
    let mut frames = Vec::new();
    while let Some(f) = decoder.decode()? {
        frames.push(f);
    }
    Ok(frames)
}

fn arb_stream() -> impl Strategy<Value = u32> {
    1u32..=u32::MAX
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from);
    prop_oneof![
        (arb_stream(), bytes.clone()).prop_map(|(stream, payload)| Frame::Data { stream, payload }),
        (0u32..10, 1u32..=u32::MAX)
            .prop_map(|(stream, increment)| Frame::Window { stream, increment }),
        arb_stream().prop_map(|stream| Frame::Fin { stream }),
        (arb_stream(), any::<u32>()).prop_map(|(stream, c)| Frame::Rst {
            stream,
            reason: ResetReason::from_code(c)
        }),
        any::<u32>().prop_map(|nonce| Frame::Ping { nonce }),
        any::<u32>().prop_map(|nonce| Frame::Pong { nonce }),
        any::<u32>().prop_map(|c| Frame::GoAway {
            reason: GoAwayReason::from_code(c)
        }),
        (arb_stream(), bytes.clone()).prop_map(|(stream, payload)| Frame::Open { stream, payload }),
        (arb_stream(), any::<bool>(), bytes.clone()).prop_map(|(stream, refused, payload)| {
            Frame::OpenResult {
                stream,
                refused,
                payload,
            }
        }),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..32)).prop_map(|(id, nonce)| {
            Frame::Hello(pb::Hello {
                protocol_version: 1,
                identity: Some(pb::hello::Identity::ClientId(id)),
                client_nonce: nonce.into(),
                mux: Some(pb::MuxSettings {
                    stream_window_bytes: 262_144,
                    session_window_bytes: 1 << 24,
                    max_frame_payload_bytes: 65_536,
                    max_streams: 1024,
                }),
                capabilities: vec!["udp".into()],
                client_version: "0.1.0".into(),
            })
        }),
        proptest::collection::vec(any::<u8>(), 0..32).prop_map(|n| Frame::Challenge(
            pb::Challenge {
                node_nonce: n.into()
            }
        )),
        proptest::collection::vec(any::<u8>(), 32)
            .prop_map(|m| Frame::Proof(pb::Proof { mac: m.into() })),
        (any::<u64>(), ".{0,20}").prop_map(|(sid, node)| Frame::Welcome(pb::Welcome {
            session_id: sid,
            node_id: node,
            client_id: 7,
            heartbeat_interval_ms: 10_000,
            mux: None,
            config_version: 3,
            credentials: None,
            node_proof: Bytes::new(),
        })),
        (0i32..9, ".{0,20}").prop_map(|(r, msg)| Frame::Refused(pb::Refused {
            reason: r,
            message: msg,
            retry_after_ms: 0,
        })),
        any::<u64>().prop_map(|v| Frame::ConfigPush(pb::ConfigPush {
            version: v,
            mappings: vec![pb::MappingConfig {
                mapping_id: "m-abc".into(),
                listen_side: true,
                listen_addr: "127.0.0.1:1".into(),
                ..Default::default()
            }],
        })),
        any::<u64>().prop_map(|v| Frame::ConfigAck(pb::ConfigAck { version: v })),
        (any::<u64>(), ".{0,12}").prop_map(|(id, code)| Frame::ControlRequest(
            pb::ControlRequest {
                request_id: id,
                body: Some(pb::control_request::Body::ActivateCode(pb::ActivateCode {
                    code,
                    listen_addr: "127.0.0.1:13306".into(),
                })),
            }
        )),
        (any::<u64>(), 0i32..9).prop_map(|(id, kind)| Frame::ControlResponse(
            pb::ControlResponse {
                request_id: id,
                result: Some(pb::control_response::Result::Error(pb::ControlError {
                    kind,
                    message: "no".into(),
                })),
            }
        )),
    ]
}

proptest! {
    #[test]
    fn frames_round_trip(frames in proptest::collection::vec(arb_frame(), 1..20)) {
        let bytes = encode_all(&frames);
        let mut decoder = Decoder::default();
        decoder.push(&bytes);
        prop_assert_eq!(decode_all(&mut decoder).unwrap(), frames);
        prop_assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn chunking_never_changes_the_result(
        frames in proptest::collection::vec(arb_frame(), 1..20),
        cuts in proptest::collection::vec(1usize..64, 1..200),
    ) {
        let bytes = encode_all(&frames);
        let mut decoder = Decoder::default();
        let mut decoded = Vec::new();
        let mut at = 0;
        let mut cut = cuts.iter().cycle();
        while at < bytes.len() {
            let n = (*cut.next().unwrap()).min(bytes.len() - at);
            decoder.push(&bytes[at..at + n]);
            at += n;
            decoded.extend(decode_all(&mut decoder).unwrap());
        }
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut decoder = Decoder::new(512);
        decoder.push(&data);
        loop {
            match decoder.decode() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    prop_assert_eq!(decoder.decode(), Err(WireError::Poisoned));
                    break;
                }
            }
            prop_assert!(decoder.buffered_len() <= data.len());
        }
    }
}

fn header(version: u8, frame_type: u8, flags: u16, stream: u32, len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = version;
    h[1] = frame_type;
    h[2..4].copy_from_slice(&flags.to_be_bytes());
    h[4..8].copy_from_slice(&stream.to_be_bytes());
    h[8..12].copy_from_slice(&len.to_be_bytes());
    h
}

fn decode_one(bytes: &[u8], max: u32) -> Result<Option<Frame>, WireError> {
    let mut d = Decoder::new(max);
    d.push(bytes);
    d.decode()
}

#[test]
fn header_layout_is_as_documented() {
    let t = Frame::Data {
        stream: 0x0102_0304,
        payload: Bytes::from_static(b"hi"),
    }
    .encode();
    assert_eq!(t.header, [1, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 2]);
    let t = Frame::Window {
        stream: 0,
        increment: 0x10000,
    }
    .encode();
    assert_eq!(t.header, [1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]);
    assert!(t.payload.is_empty());
    let t = Frame::OpenResult {
        stream: 5,
        refused: true,
        payload: Bytes::new(),
    }
    .encode();
    assert_eq!(&t.header[..4], &[1, 8, 0, 1]);
}

#[test]
fn malformed_headers_get_typed_errors() {
    let cases: Vec<([u8; HEADER_LEN], WireError)> = vec![
        (header(2, 0, 0, 1, 0), WireError::UnsupportedVersion(2)),
        (header(1, 0x7f, 0, 1, 0), WireError::UnknownFrameType(0x7f)),
        (
            header(1, 0, 0x8000, 1, 0),
            WireError::UnknownFlags {
                frame_type: FrameType::Data,
                flags: 0x8000,
            },
        ),
        (
            header(1, 0, 0, 0, 0),
            WireError::StreamIdZero(FrameType::Data),
        ),
        (
            header(1, 0x07, 0, 0, 0),
            WireError::StreamIdZero(FrameType::Open),
        ),
        (
            header(1, 0x04, 0, 9, 0),
            WireError::UnexpectedStreamId {
                frame_type: FrameType::Ping,
                stream_id: 9,
            },
        ),
        (
            header(1, 0x10, 0, 3, 0),
            WireError::UnexpectedStreamId {
                frame_type: FrameType::Hello,
                stream_id: 3,
            },
        ),
        (header(1, 0x01, 0, 1, 0), WireError::ZeroWindowIncrement),
        (
            header(1, 0, 0, 1, 1025),
            WireError::FrameTooLarge {
                length: 1025,
                max: 1024,
            },
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(decode_one(&bytes, 1024), Err(expected), "{bytes:?}");
    }
}

#[test]
fn oversized_length_is_rejected_before_the_payload_arrives() {
    let mut d = Decoder::new(1024);
    d.push(&header(1, 0, 0, 1, u32::MAX));
    assert!(matches!(d.decode(), Err(WireError::FrameTooLarge { .. })));
    // Nothing was reserved for the announced 4 GiB.
    assert!(d.buffer_mut().capacity() < 4096);
}

#[test]
fn value_frames_ignore_length_limit_but_payload_frames_do_not() {
    // A WINDOW's value field is a credit increment, not a length, so a huge value is fine.
    let frame = decode_one(&header(1, 0x01, 0, 3, u32::MAX), 16).unwrap();
    assert_eq!(
        frame,
        Some(Frame::Window {
            stream: 3,
            increment: u32::MAX
        })
    );
}

#[test]
fn truncated_input_waits_and_garbage_control_payload_is_an_error() {
    let mut d = Decoder::default();
    let full = encode_all(&[Frame::Data {
        stream: 1,
        payload: Bytes::from_static(b"hello"),
    }]);
    d.push(&full[..full.len() - 1]);
    assert_eq!(d.decode(), Ok(None));
    assert_eq!(d.decode(), Ok(None));
    d.push(&full[full.len() - 1..]);
    assert!(matches!(d.decode(), Ok(Some(Frame::Data { .. }))));

    let mut bad = BytesMut::new();
    bad.extend_from_slice(&header(1, 0x10, 0, 0, 3));
    bad.extend_from_slice(&[0xff, 0xff, 0xff]);
    let err = decode_one(&bad, 1024).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::BadMessage {
                frame_type: FrameType::Hello,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn data_payload_shares_the_read_buffer() {
    let mut d = Decoder::default();
    let bytes = encode_all(&[Frame::Data {
        stream: 1,
        payload: Bytes::from(vec![7u8; 4096]),
    }]);
    d.push(&bytes);
    let buffer_start = d.buffer_mut().as_ptr() as usize;
    let Some(Frame::Data { payload, .. }) = d.decode().unwrap() else {
        panic!("expected data");
    };
    assert_eq!(payload.as_ptr() as usize, buffer_start + HEADER_LEN);
}

#[test]
fn owned_whole_frames_are_decoded_without_a_copy() {
    let mut d = Decoder::default();
    let bytes = encode_all(&[
        Frame::Ping { nonce: 9 },
        Frame::Data {
            stream: 3,
            payload: Bytes::from(vec![5u8; 8192]),
        },
    ]);
    let start = bytes.as_ptr() as usize;
    d.push(bytes);
    assert_eq!(d.decode().unwrap(), Some(Frame::Ping { nonce: 9 }));
    let Some(Frame::Data { payload, .. }) = d.decode().unwrap() else {
        panic!("expected data");
    };
    // The payload is the caller's buffer itself, after the PING frame and the DATA header.
    assert_eq!(payload.as_ptr() as usize, start + 2 * HEADER_LEN);
    assert_eq!(d.buffered_len(), 0);
}

#[test]
fn owned_bytes_after_a_partial_frame_are_joined_in_order() {
    let frames = [
        Frame::Data {
            stream: 1,
            payload: Bytes::from(vec![1u8; 1000]),
        },
        Frame::Data {
            stream: 2,
            payload: Bytes::from(vec![2u8; 1000]),
        },
    ];
    let mut all = encode_all(&frames);
    for cut in [1, HEADER_LEN, 500, 1011, 1012, 1500] {
        let mut d = Decoder::default();
        let mut first = all.clone();
        let second = first.split_off(cut);
        d.push(first);
        d.push(second);
        assert_eq!(decode_all(&mut d).unwrap(), frames, "cut at {cut}");
    }
    // Contiguous pieces of one buffer are joined without a copy.
    let mut d = Decoder::default();
    let tail = all.split_off(700);
    d.push(all);
    d.push(tail);
    assert_eq!(decode_all(&mut d).unwrap(), frames);
}

#[test]
fn whole_frames_len_stops_at_the_first_partial_frame() {
    let frames = [
        Frame::Ping { nonce: 1 },
        Frame::Data {
            stream: 1,
            payload: Bytes::from(vec![1u8; 100]),
        },
        Frame::Fin { stream: 1 },
    ];
    let bytes = encode_all(&frames);
    let ends = [HEADER_LEN, 2 * HEADER_LEN + 100, 3 * HEADER_LEN + 100];
    for len in 0..=bytes.len() {
        let expected = ends
            .iter()
            .copied()
            .filter(|&e| e <= len)
            .max()
            .unwrap_or(0);
        assert_eq!(whole_frames_len(&bytes[..len]), expected, "prefix of {len}");
    }
}

#[test]
fn whole_frames_len_hands_over_bad_headers_and_huge_partial_frames() {
    // A bad version: everything, so the decoder sees it and reports it.
    let mut bad = encode_all(&[Frame::Ping { nonce: 1 }]).to_vec();
    bad[0] = 0xee;
    assert_eq!(whole_frames_len(&bad), bad.len());
    // A frame claiming 16 MiB: held back only until HOLD_PARTIAL_FRAME_MAX bytes are buffered.
    let mut huge = vec![PROTOCOL_VERSION, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0];
    huge.resize(HOLD_PARTIAL_FRAME_MAX - 1, 0);
    assert_eq!(whole_frames_len(&huge), 0);
    huge.push(0);
    assert_eq!(whole_frames_len(&huge), huge.len());
}

proptest! {
    /// A driver that reads arbitrary chunks and hands over only whole frames (as the tokio
    /// reader does) decodes exactly the frames sent, with nothing left over.
    #[test]
    fn handing_over_whole_frames_decodes_everything(
        frames in proptest::collection::vec(arb_frame(), 1..20),
        chunk_sizes in proptest::collection::vec(1usize..400, 1..50),
    ) {
        let wire = encode_all(&frames);
        let mut read = BytesMut::new();
        let mut d = Decoder::default();
        let mut decoded = Vec::new();
        let mut at = 0;
        let mut sizes = chunk_sizes.iter().cycle();
        while at < wire.len() {
            let n = (*sizes.next().unwrap()).min(wire.len() - at);
            read.extend_from_slice(&wire[at..at + n]);
            at += n;
            let ready = whole_frames_len(&read);
            d.push(read.split_to(ready));
            decoded.extend(decode_all(&mut d).unwrap());
            prop_assert_eq!(d.buffered_len(), 0);
        }
        prop_assert!(read.is_empty());
        prop_assert_eq!(decoded, frames);
    }
}
