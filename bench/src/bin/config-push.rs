//! The config-push latency benchmark of issue 6: from a management API call to the client's
//! acknowledgement of the configuration it caused, on loopback.
//!
//! It starts a real `tunnox server` (TLS, `--api-listen`, the admin key in `TUNNOX_API_KEY`)
//! and a real `tunnox client` (registered on first start), then `--ops` times (after `--warmup`
//! unmeasured ones): `POST /api/v1/mappings` an `http_host` mapping whose target is that client,
//! wait for the client to apply it, `DELETE /api/v1/mappings/{id}`, wait again. Each wait ends
//! at the client's `config N applied: …` line on its stdout, which `tunnox client` prints right
//! after it applied the pushed configuration and queued its acknowledgement (`ConfigAck`) to
//! the node; the reader thread stamps each line as it arrives. One keep-alive HTTP connection
//! carries the API calls; every call is timed from just before its request is written.
//!
//! Afterwards it reads the node's own histogram, `tunnox_config_push_ack_seconds` (from the
//! node's push to its receipt of the acknowledgement), from `/metrics`.
//!
//! ```sh
//! cargo build --release -p tunnox -p tunnox-bench
//! target/release/config-push --tunnox target/release/tunnox
//! ```

#![allow(clippy::print_stdout)] // a command-line benchmark: stdout is its output

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// The `tunnox` binary to run the server and the client with.
    #[arg(long, default_value = "target/release/tunnox")]
    tunnox: String,
    /// Measured create-and-delete rounds (each is two operations).
    #[arg(long, default_value_t = 1_000)]
    ops: usize,
    /// Unmeasured rounds first.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
}

/// The admin key the server is started with (a local benchmark: not a secret).
const API_KEY: &str = "config-push-benchmark-admin-key";
/// Longest wait for a line or an answer.
const WAIT: Duration = Duration::from_secs(10);

/// A child process killed when dropped, its stdout lines stamped on arrival.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Proc {
    fn start(mut command: Command) -> anyhow::Result<Proc> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    return;
                }
            }
        });
        Ok(Proc { child, lines })
    }

    /// The next line containing `needle`, with when it arrived.
    fn wait_for(&self, needle: &str) -> anyhow::Result<(Instant, String)> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, line) = self
                .lines
                .recv_timeout(left)
                .with_context(|| format!("no line with {needle:?} within {WAIT:?}"))?;
            if line.contains(needle) {
                return Ok((at, line));
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One keep-alive HTTP/1.1 connection to the API.
struct Api {
    stream: BufReader<TcpStream>,
    addr: String,
}

impl Api {
    fn connect(addr: &str) -> anyhow::Result<Api> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(WAIT))?;
        Ok(Api {
            stream: BufReader::new(stream),
            addr: addr.to_owned(),
        })
    }

    /// `method path` with an optional JSON body: the status and the body.
    fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {API_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.stream.get_mut().write_all(request.as_bytes())?;
        let mut status_line = String::new();
        self.stream.read_line(&mut status_line)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            self.stream.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut answer = vec![0u8; length];
        self.stream.read_exact(&mut answer)?;
        Ok((status, String::from_utf8_lossy(&answer).into_owned()))
    }
}

/// Latencies of one kind of operation.
#[derive(Default)]
struct Samples {
    acked: Vec<Duration>,
    answered: Vec<Duration>,
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    println!(
        "| {name} | {} | {} | {} | {} |",
        samples.len(),
        ms(quantile(&samples, 0.50)),
        ms(quantile(&samples, 0.99)),
        ms(samples.last().copied().unwrap_or_default()),
    );
}

fn start_server(tunnox: &str, dir: &Path) -> anyhow::Result<(Proc, String, String, String)> {
    let listen = format!("127.0.0.1:{}", free_port()?);
    let api = format!("127.0.0.1:{}", free_port()?);
    let mut command = Command::new(tunnox);
    command
        .args([
            "server",
            "--listen",
            &listen,
            "--memory-storage",
            "--api-listen",
            &api,
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("TUNNOX_API_KEY", API_KEY);
    let server = Proc::start(command)?;
    let (_, line) = server.wait_for("fingerprint:")?;
    let fingerprint = line
        .rsplit(' ')
        .next()
        .context("no fingerprint")?
        .to_owned();
    Ok((server, listen, api, fingerprint))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir: PathBuf =
        std::env::temp_dir().join(format!("tunnox-config-push-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (_server, listen, api_addr, fingerprint) = start_server(&args.tunnox, &dir)?;

    let mut command = Command::new(&args.tunnox);
    command
        .args(["client", "--server", &listen, "--fingerprint", &fingerprint])
        .arg("--credentials")
        .arg(dir.join("client.json"));
    let client = Proc::start(command)?;
    let (_, connected) = client.wait_for("connected to node")?;
    let client_id: u64 = connected
        .rsplit(' ')
        .next()
        .and_then(|id| id.parse().ok())
        .with_context(|| format!("no client id in {connected:?}"))?;
    client.wait_for("applied")?;

    let mut api = Api::connect(&api_addr)?;
    let (mut create, mut delete) = (Samples::default(), Samples::default());
    for round in 0..args.warmup + args.ops {
        let measured = round >= args.warmup;
        let body = format!(
            r#"{{"entry":{{"kind":"http_host","host":"bench-{round}.example"}},"protocol":"http","target_client":{client_id},"target":{{"kind":"fixed","host":"127.0.0.1","port":9}}}}"#
        );
        let started = Instant::now();
        let (status, answer) = api.call("POST", "/api/v1/mappings", Some(&body))?;
        let answered = started.elapsed();
        if status != 201 {
            bail!("create answered {status}: {answer}");
        }
        let (acked_at, _) = client.wait_for("target of 1")?;
        if measured {
            create.answered.push(answered);
            create
                .acked
                .push(acked_at.saturating_duration_since(started));
        }
        let created: serde_json::Value = serde_json::from_str(&answer)?;
        let id = created["data"]["id"]
            .as_str()
            .with_context(|| format!("no mapping id in {answer}"))?
            .to_owned();

        let started = Instant::now();
        let (status, answer) = api.call("DELETE", &format!("/api/v1/mappings/{id}"), None)?;
        let answered = started.elapsed();
        if status != 200 {
            bail!("delete answered {status}: {answer}");
        }
        let (acked_at, _) = client.wait_for("target of 0")?;
        if measured {
            delete.answered.push(answered);
            delete
                .acked
                .push(acked_at.saturating_duration_since(started));
        }
    }

    println!(
        "config push, {} rounds of create + delete ({} warm-up rounds first), loopback, TLS",
        args.ops, args.warmup
    );
    println!("| latency (ms) | operations | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    let both: Vec<Duration> = create.acked.iter().chain(&delete.acked).copied().collect();
    report("API call → client applied and acked, all", both);
    report("… POST /api/v1/mappings", create.acked);
    report("… DELETE /api/v1/mappings/{id}", delete.acked);
    let answers: Vec<Duration> = create
        .answered
        .iter()
        .chain(&delete.answered)
        .copied()
        .collect();
    report("API call → HTTP answer, all", answers);

    let (_, metrics) = api.call("GET", "/metrics", None)?;
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    if let (Some(count), Some(sum)) = (
        value("tunnox_config_push_ack_seconds_count"),
        value("tunnox_config_push_ack_seconds_sum"),
    ) && count > 0.0
    {
        println!(
            "node's own view (tunnox_config_push_ack_seconds, push → ack received, every push \
             including warm-up): {count} acks, mean {:.3} ms",
            sum / count * 1000.0
        );
    }
    drop(client);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
