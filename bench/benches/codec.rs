//! Criterion micro-benchmarks of the frame codec: DATA header encode/decode, a full 64 KiB DATA
//! frame through a `Decoder`, and a control (Hello) frame round trip.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tunnox_core::wire::{DEFAULT_MAX_PAYLOAD_BYTES, Decoder, Frame, HEADER_LEN, Header};
use tunnox_proto::wire as pb;

const DATA_BYTES: usize = 64 * 1024;

fn data_frame() -> Frame {
    Frame::Data {
        stream: 7,
        payload: Bytes::from(vec![0xa5; DATA_BYTES]),
    }
}

fn header_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/header");
    let frame = data_frame();
    group.bench_function("encode_data_frame", |b| {
        b.iter(|| black_box(&frame).encode())
    });
    let header: [u8; HEADER_LEN] = frame.encode().header;
    group.bench_function("decode_data_header", |b| {
        b.iter(|| Header::decode(black_box(&header), DEFAULT_MAX_PAYLOAD_BYTES))
    });
    group.bench_function("encode_then_decode_data_header", |b| {
        b.iter(|| {
            let t = black_box(&frame).encode();
            Header::decode(black_box(&t.header), DEFAULT_MAX_PAYLOAD_BYTES)
        })
    });
    group.finish();
}

fn frame_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/frame");
    let frame = data_frame();
    let mut decoder = Decoder::new(DEFAULT_MAX_PAYLOAD_BYTES);
    group.throughput(Throughput::Bytes(DATA_BYTES as u64));
    group.bench_function("data_64KiB_encode_write_decode", |b| {
        b.iter(|| {
            let t = black_box(&frame).encode();
            let buf = decoder.buffer_mut();
            buf.extend_from_slice(&t.header);
            buf.extend_from_slice(&t.payload);
            match decoder.decode() {
                Ok(Some(decoded)) => decoded,
                other => panic!("decode failed: {other:?}"),
            }
        })
    });
    let hello = Frame::Hello(pb::Hello {
        protocol_version: 1,
        identity: Some(pb::hello::Identity::ClientId(42)),
        client_nonce: Bytes::from_static(&[7; 32]),
        mux: Some(pb::MuxSettings {
            stream_window_bytes: 256 * 1024,
            session_window_bytes: 64 * 1024 * 1024,
            max_frame_payload_bytes: 64 * 1024,
            max_streams: 4096,
        }),
        capabilities: vec!["udp".into(), "socks5".into()],
        client_version: "0.1.0".into(),
    });
    let hello_len = hello.encode().len() as u64;
    group.throughput(Throughput::Bytes(hello_len));
    group.bench_function("hello_encode_write_decode", |b| {
        b.iter(|| {
            let t = black_box(&hello).encode();
            let buf = decoder.buffer_mut();
            buf.extend_from_slice(&t.header);
            buf.extend_from_slice(&t.payload);
            match decoder.decode() {
                Ok(Some(decoded)) => decoded,
                other => panic!("decode failed: {other:?}"),
            }
        })
    });
    group.finish();
}

criterion_group!(benches, header_benches, frame_benches);
criterion_main!(benches);
