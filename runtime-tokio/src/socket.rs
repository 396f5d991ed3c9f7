//! A TCP socket served by two tasks: a reader that forwards bytes to the driver (and can be
//! paused, so a full stream stops the socket instead of growing a buffer) and a writer that
//! writes what the driver queues (several queued chunks per vectored write) and reports it.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tunnox_core::wire::Transmit;

/// Identifies a socket within one driver.
pub type SocketId = u64;

/// Most writes queued for one socket before it is judged stuck.
const WRITE_QUEUE: usize = 4096;
/// Bytes read per read call.
const READ_CHUNK: usize = 64 * 1024;
/// Most queued bytes gathered into one vectored write.
const WRITE_BATCH: usize = 256 * 1024;
/// Most chunks in one vectored write (below the usual IOV_MAX of 1024).
const MAX_IOVECS: usize = 64;

/// Payloads at least this long are written from where they are, not copied into the batch.
const SHARE_PAYLOAD_FROM: usize = 1024;

/// Frames gathered for one socket during a flush: headers and small frames are coalesced into
/// one buffer, large DATA payloads are passed on as they are (no copy), and the whole batch goes
/// to the socket's writer as one queued write.
#[derive(Debug, Default)]
pub struct Outbox {
    chunks: Vec<Bytes>,
    small: BytesMut,
}

impl Outbox {
    /// Appends one encoded frame.
    pub fn push(&mut self, transmit: Transmit) {
        self.small.put_slice(&transmit.header);
        if transmit.payload.len() < SHARE_PAYLOAD_FROM {
            self.small.put_slice(&transmit.payload);
        } else {
            self.chunks.push(self.small.split().freeze());
            self.chunks.push(transmit.payload);
        }
    }

    /// Whether nothing is gathered.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.small.is_empty()
    }

    /// Everything gathered, in order; leaves the outbox empty.
    pub fn take(&mut self) -> Vec<Bytes> {
        if !self.small.is_empty() {
            self.chunks.push(self.small.split().freeze());
        }
        std::mem::take(&mut self.chunks)
    }
}

/// Writes every chunk in `batch` with vectored writes, then empties it.
async fn write_batch<W: AsyncWrite + Unpin>(
    write: &mut W,
    batch: &mut Vec<Bytes>,
) -> std::io::Result<()> {
    use bytes::Buf;
    let mut first = 0;
    loop {
        while batch.get(first).is_some_and(Bytes::is_empty) {
            first += 1;
        }
        if first == batch.len() {
            break;
        }
        // On the stack: no allocation per write on the data path.
        let mut slices = [std::io::IoSlice::new(&[]); MAX_IOVECS];
        let mut count = 0;
        for (slot, chunk) in slices.iter_mut().zip(&batch[first..]) {
            *slot = std::io::IoSlice::new(chunk);
            count += 1;
        }
        let mut written = write.write_vectored(&slices[..count]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let chunk = &mut batch[first];
            let step = written.min(chunk.len());
            chunk.advance(step);
            written -= step;
            if chunk.is_empty() {
                first += 1;
            }
        }
    }
    batch.clear();
    Ok(())
}

/// A driver's sockets by id, each with what the driver keeps about it (`K`).
#[derive(Debug)]
pub struct SocketTable<K> {
    sockets: BTreeMap<SocketId, (Socket, K)>,
    next_id: SocketId,
    events: mpsc::Sender<SocketEvent>,
}

impl<K> SocketTable<K> {
    /// An empty table whose sockets report to `events`.
    pub fn new(events: mpsc::Sender<SocketEvent>) -> Self {
        SocketTable {
            sockets: BTreeMap::new(),
            next_id: 1,
            events,
        }
    }

    /// The id the next added socket will get.
    pub fn next_id(&self) -> SocketId {
        self.next_id
    }

    /// Serves a TCP stream (Nagle off); returns its id.
    pub fn add_tcp(&mut self, stream: TcpStream, framing: Framing, kind: K) -> SocketId {
        let _ = stream.set_nodelay(true);
        self.add_stream(stream, framing, kind)
    }

    /// Serves any byte stream (a TLS session, say); returns its id.
    pub fn add_stream<S>(&mut self, stream: S, framing: Framing, kind: K) -> SocketId
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let id = self.next_id;
        self.next_id += 1;
        let socket = Socket::spawn_stream(id, stream, framing, self.events.clone());
        self.sockets.insert(id, (socket, kind));
        id
    }

    /// The socket `id` and its notes.
    pub fn get(&self, id: SocketId) -> Option<&(Socket, K)> {
        self.sockets.get(&id)
    }

    /// The socket `id` and its notes, to change.
    pub fn get_mut(&mut self, id: SocketId) -> Option<&mut (Socket, K)> {
        self.sockets.get_mut(&id)
    }

    /// Takes socket `id` out of the table (the caller closes or aborts it).
    pub fn remove(&mut self, id: SocketId) -> Option<(Socket, K)> {
        self.sockets.remove(&id)
    }

    /// Aborts every socket at once (the driver is stopping).
    pub fn abort_all(&mut self) {
        for (_, (socket, _)) in std::mem::take(&mut self.sockets) {
            socket.abort();
        }
    }
}

/// How a socket's reader cuts what it reads into `Data` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// As read (a visitor or a target: opaque bytes).
    Raw,
    /// At frame boundaries (a session): the reader holds back a partial frame until it is
    /// whole, so the session's decoder takes every read buffer without copying it.
    Frames,
}

/// What a socket's tasks report to the driver.
#[derive(Debug)]
pub enum SocketEvent {
    /// Bytes read (for a framed socket: whole frames, see [`Framing`]).
    Data(SocketId, BytesMut),
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
    Chunks(Vec<Bytes>),
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
    /// Starts serving any byte stream (a TLS session, say) as socket `id`.
    fn spawn_stream<S>(
        id: SocketId,
        stream: S,
        framing: Framing,
        events: mpsc::Sender<SocketEvent>,
    ) -> Socket
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
                let read = read.read_buf(&mut buf).await;
                let ready = match (&read, framing) {
                    (Ok(0) | Err(_), _) | (_, Framing::Raw) => buf.len(),
                    (Ok(_), Framing::Frames) => tunnox_core::wire::whole_frames_len(&buf),
                };
                if ready > 0
                    && read_events
                        .send(SocketEvent::Data(id, buf.split_to(ready)))
                        .await
                        .is_err()
                {
                    return;
                }
                let end = match read {
                    Ok(0) => SocketEvent::Eof(id),
                    Ok(_) => continue,
                    Err(_) => SocketEvent::Failed(id),
                };
                let _ = read_events.send(end).await;
                return;
            }
        });
        let (writes, mut queue) = mpsc::channel::<WriteCmd>(WRITE_QUEUE);
        let writer = tokio::spawn(async move {
            let mut batch: Vec<Bytes> = Vec::new();
            while let Some(first) = queue.recv().await {
                // Take what else is already queued, so one vectored write (and one report)
                // covers several chunks.
                let mut next = Some(first);
                let mut shutdown = false;
                let mut batched = 0;
                while let Some(cmd) = next.take() {
                    match cmd {
                        WriteCmd::Data(bytes) => {
                            batched += bytes.len();
                            batch.push(bytes);
                        }
                        WriteCmd::Chunks(chunks) => {
                            batched += chunks.iter().map(Bytes::len).sum::<usize>();
                            batch.extend(chunks);
                        }
                        WriteCmd::Shutdown => {
                            shutdown = true;
                            break;
                        }
                    }
                    if batched < WRITE_BATCH {
                        next = queue.try_recv().ok();
                    }
                }
                if batched > 0 {
                    if write_batch(&mut write, &mut batch).await.is_err() {
                        let _ = events.send(SocketEvent::Failed(id)).await;
                        return;
                    }
                    if events
                        .send(SocketEvent::Written(id, batched))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if shutdown {
                    let _ = write.shutdown().await;
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

    /// Queues several chunks to write in order, as one write. Returns false if the socket is
    /// stuck or gone (the caller closes it).
    pub fn write_chunks(&self, chunks: Vec<Bytes>) -> bool {
        self.writes.try_send(WriteCmd::Chunks(chunks)).is_ok()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Accepts at most `step` bytes per call, vectored or not.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut left = self.step;
            for b in bufs {
                let n = b.len().min(left);
                self.out.extend_from_slice(&b[..n]);
                left -= n;
            }
            Poll::Ready(Ok(self.step - left))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_batch_survives_partial_writes_and_empty_chunks() {
        let chunks: Vec<Bytes> = (0..100u8)
            .map(|i| Bytes::from(vec![i; usize::from(i % 7)]))
            .collect();
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        for step in [1, 3, 5, 64, 10_000] {
            let mut sink = Trickle {
                out: Vec::new(),
                step,
            };
            let mut batch = chunks.clone();
            write_batch(&mut sink, &mut batch).await.unwrap();
            assert_eq!(sink.out, expected, "step {step}");
            assert!(batch.is_empty());
        }
    }

    #[test]
    fn an_outbox_keeps_frame_order_and_shares_large_payloads() {
        use tunnox_core::wire::Frame;
        let large = Bytes::from(vec![9u8; 4 * SHARE_PAYLOAD_FROM]);
        let frames = [
            Frame::Ping { nonce: 1 },
            Frame::Data {
                stream: 1,
                payload: Bytes::from_static(b"small"),
            },
            Frame::Data {
                stream: 1,
                payload: large.clone(),
            },
            Frame::Fin { stream: 1 },
        ];
        let mut outbox = Outbox::default();
        let mut expected = BytesMut::new();
        for frame in &frames {
            frame.encode().write_to(&mut expected);
            outbox.push(frame.encode());
        }
        let chunks = outbox.take();
        assert!(outbox.is_empty());
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(joined, expected.to_vec());
        // Ping, small DATA and the large DATA's header coalesced; the large payload as it was;
        // the FIN after it.
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[1].as_ptr(), large.as_ptr());
    }

    #[tokio::test]
    async fn a_writer_that_takes_nothing_is_an_error_not_a_hang() {
        let mut sink = Trickle {
            out: Vec::new(),
            step: 0,
        };
        let mut batch = vec![Bytes::from_static(b"abc")];
        let err = write_batch(&mut sink, &mut batch).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WriteZero);
    }
}
