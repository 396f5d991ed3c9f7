//! Criterion benchmark of the mux data path: a client/node pair in memory moving 64 KiB
//! application writes on 1 and on 8 streams (see `tunnox_bench::MuxPair`).

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tunnox_bench::MuxPair;
use tunnox_core::mux::MuxConfig;

const WRITE_BYTES: usize = 64 * 1024;
/// Bytes moved per benchmark iteration: 16 writes of 64 KiB.
const BYTES_PER_ITER: u64 = 16 * WRITE_BYTES as u64;

fn mux_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("mux/transfer_64KiB_writes");
    group.throughput(Throughput::Bytes(BYTES_PER_ITER));
    let chunk = Bytes::from(vec![0x5a; WRITE_BYTES]);
    for streams in [1, 8] {
        let mut pair = MuxPair::new(MuxConfig::default(), streams);
        // Warm up buffers and windows before criterion's own warm-up.
        pair.transfer(&chunk, 64 * BYTES_PER_ITER);
        group.bench_function(format!("{streams}_streams"), |b| {
            b.iter(|| pair.transfer(&chunk, BYTES_PER_ITER))
        });
    }
    group.finish();
}

criterion_group!(benches, mux_benches);
criterion_main!(benches);
