//! The storage benchmark of issue 5: `HybridStorage` (a Redis cache in front of `RemoteStorage`
//! to a `tunnox storage-server` process on loopback) under a Zipf read workload.
//!
//! It starts the storage server (`--tunnox`, a fresh data directory), writes `--keys` keys
//! through the server (not the cache, so the cache starts cold), then measures:
//!
//! 1. the cache hit ratio of `--reads` Zipf(`--zipf-s`) reads from a cold cache;
//! 2. ops/s of `--tasks` concurrent tasks for `--seconds`, read-only and then with
//!    `--write-percent` writes.
//!
//! ```sh
//! cargo build --release -p tunnox -p tunnox-bench
//! target/release/storage-bench --tunnox target/release/tunnox
//! ```

#![allow(clippy::print_stdout)] // a command-line benchmark: stdout is its output

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use tunnox_core::rng::Rng;
use tunnox_runtime_tokio::clock::WallClock;
use tunnox_runtime_tokio::storage::{
    CachePolicy, HybridStats, HybridStorage, RedisCache, RedisConfig, RemoteConfig, RemoteStorage,
    Storage, StorageToken,
};

#[derive(Parser, Debug)]
struct Args {
    /// The `tunnox` binary to run the storage server with.
    #[arg(long, default_value = "target/release/tunnox")]
    tunnox: String,
    /// Redis for the cache.
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    redis: String,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 128)]
    value_bytes: usize,
    /// Zipf exponent of the key popularity.
    #[arg(long, default_value_t = 1.1)]
    zipf_s: f64,
    /// Reads of the hit-ratio phase.
    #[arg(long, default_value_t = 200_000)]
    reads: u64,
    /// Concurrent tasks.
    #[arg(long, default_value_t = 64)]
    tasks: usize,
    /// Seconds of each throughput phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Percent of writes in the mixed throughput phase.
    #[arg(long, default_value_t = 5)]
    write_percent: u64,
    /// Tokio worker threads of the benchmark process.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// Samples key indexes with probability ∝ 1/(rank+1)^s.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 1..=n {
            total += 1.0 / (rank as f64).powf(s);
            cdf.push(total);
        }
        for weight in &mut cdf {
            *weight /= total;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit_f64();
        self.cdf.partition_point(|&p| p < u).min(self.cdf.len() - 1)
    }
}

/// The storage server process, killed when dropped.
struct ServerProc(Child);

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(tunnox: &str, token: &str) -> anyhow::Result<(ServerProc, String)> {
    let dir = std::env::temp_dir().join(format!("tunnox-storage-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = Command::new(tunnox)
        .args([
            "storage-server",
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--data",
        ])
        .arg(&dir)
        .env("TUNNOX_STORAGE_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {tunnox} storage-server"))?;
    let stdout = child.stdout.take().context("the server's stdout")?;
    let server = ServerProc(child);
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().context("the server printed nothing")??;
    let Some(addr) = first.strip_prefix("tunnox storage-server listening on ") else {
        bail!("unexpected first line from the server: {first}");
    };
    let addr = addr.trim().to_owned();
    // Keep draining its stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((server, addr))
}

fn key(index: usize) -> String {
    format!("bench/key/{index:06}")
}

/// Runs `tasks` tasks for `seconds`, each doing Zipf reads and `write_percent` % writes; ops/s.
async fn throughput(
    hybrid: &Arc<HybridStorage<RemoteStorage>>,
    zipf: &Arc<Zipf>,
    args: &Args,
    write_percent: u64,
) -> anyhow::Result<(f64, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let value = Bytes::from(vec![b'w'; args.value_bytes]);
    let mut handles = Vec::new();
    for task in 0..args.tasks {
        let (hybrid, zipf, stop, ops, errors, value) = (
            hybrid.clone(),
            zipf.clone(),
            stop.clone(),
            ops.clone(),
            errors.clone(),
            value.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut rng = Rng::seed_from_u64(1000 + task as u64);
            while !stop.load(Ordering::Relaxed) {
                let k = key(zipf.sample(&mut rng));
                let ok = if rng.below(100) < write_percent {
                    hybrid.set(&k, value.clone(), None).await.is_ok()
                } else {
                    hybrid.get(&k).await.is_ok()
                };
                ops.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok((
        ops.load(Ordering::Relaxed) as f64 / elapsed,
        errors.load(Ordering::Relaxed),
    ))
}

fn hit_ratio(before: HybridStats, after: HybridStats) -> (f64, u64, u64) {
    let hits = after.cache.hits - before.cache.hits;
    let misses = after.cache.misses - before.cache.misses;
    (hits as f64 / (hits + misses).max(1) as f64, hits, misses)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let token = "storage-bench token, not a secret";
    let (_server, addr) = start_server(&args.tunnox, token)?;
    let remote =
        RemoteStorage::connect(RemoteConfig::new(addr.clone(), StorageToken::new(token)?))?;
    remote.ping().await?;

    // Preload through the server directly: the cache starts cold.
    let value = Bytes::from(vec![b'v'; args.value_bytes]);
    let names: Vec<String> = (0..args.keys).map(key).collect();
    for chunk in names.chunks(500) {
        let pairs: Vec<(&str, Bytes)> = chunk.iter().map(|k| (k.as_str(), value.clone())).collect();
        remote.set_many(&pairs, None).await?;
    }

    let prefix = format!("tunnox:bench:{}:", std::process::id());
    let mut cache_config = RedisConfig::new(args.redis.clone());
    cache_config.key_prefix = prefix.clone();
    let cache = RedisCache::open(&cache_config, WallClock::new())?;
    let hybrid = Arc::new(HybridStorage::new(remote, cache, CachePolicy::default()));
    let zipf = Arc::new(Zipf::new(args.keys, args.zipf_s));
    println!(
        "storage server {addr}; {} keys of {} B; Zipf s={}; {} tasks; cache policy {:?}",
        args.keys,
        args.value_bytes,
        args.zipf_s,
        args.tasks,
        CachePolicy::default()
    );

    // 1. Hit ratio from a cold cache.
    let before = hybrid.stats();
    let started = Instant::now();
    let per_task = args.reads / args.tasks as u64;
    let mut handles = Vec::new();
    for task in 0..args.tasks {
        let (hybrid, zipf) = (hybrid.clone(), zipf.clone());
        handles.push(tokio::spawn(async move {
            let mut rng = Rng::seed_from_u64(task as u64);
            for _ in 0..per_task {
                let _ = hybrid.get(&key(zipf.sample(&mut rng))).await;
            }
        }));
    }
    for handle in handles {
        handle.await?;
    }
    let (ratio, hits, misses) = hit_ratio(before, hybrid.stats());
    let elapsed = started.elapsed().as_secs_f64();
    // The same draws again (same seeds), counted: every distinct key's first read must miss.
    let mut distinct = std::collections::HashSet::new();
    for task in 0..args.tasks {
        let mut rng = Rng::seed_from_u64(task as u64);
        for _ in 0..per_task {
            distinct.insert(zipf.sample(&mut rng));
        }
    }
    let reads = per_task * args.tasks as u64;
    println!(
        "hit ratio, {reads} Zipf reads from a cold cache: {:.2} % ({hits} hits, {misses} misses) \
         in {elapsed:.1} s; {} distinct keys read, so the best possible is {:.2} %",
        ratio * 100.0,
        distinct.len(),
        100.0 * (1.0 - distinct.len() as f64 / reads as f64)
    );

    // 2. Throughput, warm cache.
    let before = hybrid.stats();
    let (read_ops, read_errors) = throughput(&hybrid, &zipf, &args, 0).await?;
    let (ratio, _, _) = hit_ratio(before, hybrid.stats());
    println!(
        "read-only: {read_ops:.0} ops/s over {} s ({read_errors} errors), hit ratio {:.2} %",
        args.seconds,
        ratio * 100.0
    );
    let before = hybrid.stats();
    let (mixed_ops, mixed_errors) = throughput(&hybrid, &zipf, &args, args.write_percent).await?;
    let (ratio, _, _) = hit_ratio(before, hybrid.stats());
    println!(
        "{}% writes: {mixed_ops:.0} ops/s over {} s ({mixed_errors} errors), read hit ratio {:.2} %",
        args.write_percent,
        args.seconds,
        ratio * 100.0
    );
    println!("stats: {:?}", hybrid.stats());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?
        .block_on(run(args))
}
