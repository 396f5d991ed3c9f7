//! A TCP socket served by two tasks: a reader that forwards bytes to the driver (and can be
//! paused, so a full stream stops the socket instead of growing a buffer) and a writer that
//! writes what the driver queues and reports each write.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Identifies a socket within one driver.
pub type SocketId = u64;

/// Most writes queued for one socket before it is judged stuck.
const WRITE_QUEUE: usize = 4096;
/// Bytes read per read call.
const READ_CHUNK: usize = 64 * 1024;

/// What a socket's tasks report to the driver.
#[derive(Debug)]
pub enum SocketEvent {
    /// Bytes read.
    Data(SocketId, Bytes),
    /// The peer shut down its write side.
    Eof(SocketId),
    /// Reading or writing failed; the socket is gone.
    Failed(SocketId),
    /// `n` queued bytes were written.
    Written(SocketId, usize),
}

#[derive(Debug)]
enum WriteCmd {
    Data(Bytes),
    Shutdown,
}

/// The driver's handle on a socket.
#[derive(Debug)]
pub struct Socket {
    writes: mpsc::Sender<WriteCmd>,
    paused: watch::Sender<bool>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Socket {
    /// Starts serving a TCP `stream` (Nagle off) as socket `id`, reporting to `events`.
    pub fn spawn(id: SocketId, stream: TcpStream, events: mpsc::Sender<SocketEvent>) -> Socket {
        let _ = stream.set_nodelay(true);
        Socket::spawn_stream(id, stream, events)
    }

    /// Starts serving any byte stream (a TLS session, say) as socket `id`.
    pub fn spawn_stream<S>(id: SocketId, stream: S, events: mpsc::Sender<SocketEvent>) -> Socket
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut read, mut write) = tokio::io::split(stream);
        let (paused_tx, mut paused) = watch::channel(false);
        let read_events = events.clone();
        let reader = tokio::spawn(async move {
            // One buffer, split per read: once the consumer drops earlier chunks, `reserve`
            // reuses the same allocation instead of faulting in fresh pages every read.
            let mut buf = BytesMut::new();
            loop {
                while *paused.borrow() {
                    if paused.changed().await.is_err() {
                        return;
                    }
                }
                buf.reserve(READ_CHUNK);
                let event = match read.read_buf(&mut buf).await {
                    Ok(0) => SocketEvent::Eof(id),
                    Ok(_) => SocketEvent::Data(id, buf.split().freeze()),
                    Err(_) => SocketEvent::Failed(id),
                };
                let end = !matches!(event, SocketEvent::Data(..));
                if read_events.send(event).await.is_err() || end {
                    return;
                }
            }
        });
        let (writes, mut queue) = mpsc::channel::<WriteCmd>(WRITE_QUEUE);
        let writer = tokio::spawn(async move {
            while let Some(cmd) = queue.recv().await {
                match cmd {
                    WriteCmd::Data(bytes) => {
                        if write.write_all(&bytes).await.is_err() {
                            let _ = events.send(SocketEvent::Failed(id)).await;
                            return;
                        }
                        if events
                            .send(SocketEvent::Written(id, bytes.len()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    WriteCmd::Shutdown => {
                        let _ = write.shutdown().await;
                    }
                }
            }
            // The driver dropped the handle: everything queued was written; close.
            let _ = write.shutdown().await;
        });
        Socket {
            writes,
            paused: paused_tx,
            reader,
            writer,
        }
    }

    /// Queues bytes to write. Returns false if the socket is stuck or gone (the caller closes it).
    pub fn write(&self, bytes: Bytes) -> bool {
        self.writes.try_send(WriteCmd::Data(bytes)).is_ok()
    }

    /// Shuts down the write side after the queued bytes.
    pub fn shutdown(&self) {
        let _ = self.writes.try_send(WriteCmd::Shutdown);
    }

    /// Stops or resumes reading.
    pub fn set_paused(&self, paused: bool) {
        let _ = self.paused.send(paused);
    }

    /// Closes after writing what is queued (the writer ends when the handle is dropped).
    pub fn close(self) {
        self.reader.abort();
    }

    /// Closes at once, dropping queued bytes.
    pub fn abort(self) {
        self.reader.abort();
        self.writer.abort();
    }
}
