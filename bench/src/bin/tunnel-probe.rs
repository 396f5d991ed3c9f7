//! Load and latency probes for the side-by-side tunnel benchmarks (`bench/peers/run.sh`): an echo
//! service to tunnel to, a 64-byte ping-pong, new-connection latency, and a holder of many idle
//! tunnelled connections. Latencies are printed as `p50_us p99_us` on one line.

#![allow(clippy::print_stdout)] // a command-line probe: stdout is its output

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Probe,
}

#[derive(Subcommand)]
enum Probe {
    /// Echo every byte back on every accepted connection.
    Echo {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// One connection: `rounds` round trips of `size` bytes (after `warmup` unmeasured ones).
    PingPong {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 20_000)]
        rounds: usize,
        #[arg(long, default_value_t = 1_000)]
        warmup: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// `count` times: connect, send one byte, wait for it to come back, close.
    Connect {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 2_000)]
        count: usize,
        #[arg(long, default_value_t = 100)]
        warmup: usize,
    },
    /// Open `count` connections, each proven end to end by a one-byte echo, print `held N`,
    /// then keep them open until stdin closes.
    Hold {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: usize,
    },
}

fn main() -> std::io::Result<()> {
    match Cli::parse().command {
        Probe::Echo { listen } => echo(listen),
        Probe::PingPong {
            to,
            rounds,
            warmup,
            size,
        } => {
            let mut stream = TcpStream::connect(to)?;
            stream.set_nodelay(true)?;
            let out = vec![0x5a; size];
            let mut back = vec![0; size];
            let mut samples = Vec::with_capacity(rounds);
            for i in 0..warmup + rounds {
                let start = Instant::now();
                stream.write_all(&out)?;
                stream.read_exact(&mut back)?;
                if i >= warmup {
                    samples.push(start.elapsed());
                }
            }
            print_percentiles(samples);
            Ok(())
        }
        Probe::Connect { to, count, warmup } => {
            let mut samples = Vec::with_capacity(count);
            for i in 0..warmup + count {
                let start = Instant::now();
                let mut stream = TcpStream::connect(to)?;
                stream.set_nodelay(true)?;
                stream.write_all(b"x")?;
                let mut byte = [0];
                stream.read_exact(&mut byte)?;
                if i >= warmup {
                    samples.push(start.elapsed());
                }
            }
            print_percentiles(samples);
            Ok(())
        }
        Probe::Hold { to, count } => {
            let mut held = Vec::with_capacity(count);
            for _ in 0..count {
                let mut stream = TcpStream::connect(to)?;
                stream.set_read_timeout(Some(Duration::from_secs(30)))?;
                stream.write_all(b"x")?;
                let mut byte = [0];
                stream.read_exact(&mut byte)?;
                held.push(stream);
            }
            println!("held {}", held.len());
            std::io::stdout().flush()?;
            // Until the harness closes stdin (or kills us).
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            Ok(())
        }
    }
}

/// Serves the echo on a small tokio runtime (it may hold tens of thousands of connections).
fn echo(listen: SocketAddr) -> std::io::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_io()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            loop {
                let (mut stream, _) = listener.accept().await?;
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let mut buf = vec![0; 16 * 1024];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        })
}

/// Prints `p50_us p99_us`.
fn print_percentiles(mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    println!("{:.1} {:.1}", at(0.50), at(0.99));
}
