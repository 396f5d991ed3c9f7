//! A socket served by two tasks: a reader that forwards bytes to the driver (and can be paused,
//! so a full stream stops the socket instead of growing a buffer) and a writer that writes what
//! the driver queues (several queued chunks per vectored write) and reports it. On a plain TCP
//! socket the driver writes directly while nothing is queued (no task hop on the way out), and an
//! idle reader holds no buffer.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::IoSlice;
use std::sync::Arc;

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
/// A read shorter than this leaves an emptied read buffer released, not kept for the next read:
/// interactive and idle connections hold no buffer, bulk transfers reuse theirs.
const KEEP_BUFFER_AFTER: usize = 16 * 1024;
/// Most queued bytes gathered into one vectored write.
const WRITE_BATCH: usize = 256 * 1024;
/// Most chunks in one vectored write (below the usual IOV_MAX of 1024).
const MAX_IOVECS: usize = 64;

/// Payloads at least this long are written from where they are, not copied into the batch.
const SHARE_PAYLOAD_FROM: usize = 1024;

/// Frames gathered for one socket during a flush: headers and small frames are coalesced into
/// one buffer, large DATA payloads are passed on as they are (no copy), and the whole batch goes
/// to the socket as one write. Frames for another socket close the batch.
#[derive(Debug, Default)]
pub struct Outbox {
    socket: Option<SocketId>,
    chunks: Vec<Bytes>,
    small: BytesMut,
}

impl Outbox {
    /// Appends one encoded frame for `socket`; returns the batch of the previous socket if this
    /// frame starts a batch for another one.
    pub fn push(&mut self, socket: SocketId, transmit: Transmit) -> Option<(SocketId, Vec<Bytes>)> {
        let closed = if self.socket == Some(socket) {
            None
        } else {
            let closed = self.take();
            self.socket = Some(socket);
            closed
        };
        self.small.put_slice(&transmit.header);
        if transmit.payload.len() < SHARE_PAYLOAD_FROM {
            self.small.put_slice(&transmit.payload);
        } else {
            self.chunks.push(self.small.split().freeze());
            self.chunks.push(transmit.payload);
        }
        closed
    }

    /// The batch gathered so far and its socket, in order; leaves the outbox empty.
    pub fn take(&mut self) -> Option<(SocketId, Vec<Bytes>)> {
        let socket = self.socket.take()?;
        if !self.small.is_empty() {
            self.chunks.push(self.small.split().freeze());
        }
        Some((socket, std::mem::take(&mut self.chunks)))
    }
}

/// Gathers up to [`MAX_IOVECS`] of `chunks` (skipping empty ones) as slices; returns how many.
fn gather<'a>(chunks: &'a [Bytes], slices: &mut [IoSlice<'a>; MAX_IOVECS]) -> usize {
    let mut count = 0;
    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
        if count == MAX_IOVECS {
            break;
        }
        slices[count] = IoSlice::new(chunk);
        count += 1;
    }
    count
}

/// Drops `written` bytes from the front of `chunks`, removing the chunks that are done.
fn consume(chunks: &mut Vec<Bytes>, mut written: usize) {
    use bytes::Buf;
    let mut done = 0;
    for chunk in chunks.iter_mut() {
        let step = written.min(chunk.len());
        chunk.advance(step);
        written -= step;
        if !chunk.is_empty() {
            break;
        }
        done += 1;
    }
    chunks.drain(..done);
}

/// Writes every chunk in `batch` with vectored writes, then empties it.
async fn write_batch<W: WriteHalf>(write: &mut W, batch: &mut Vec<Bytes>) -> std::io::Result<()> {
    loop {
        // On the stack: no allocation per write on the data path.
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let count = gather(batch, &mut slices);
        if count == 0 {
            break;
        }
        let written = write.write_vectored(&slices[..count]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        consume(batch, written);
    }
    batch.clear();
    Ok(())
}

/// The read side of a socket, as its reader task uses it.
trait ReadHalf: Send + 'static {
    /// Reads once into `buf` (reserving room first); 0 at end of stream.
    fn read_into(
        &mut self,
        buf: &mut BytesMut,
    ) -> impl Future<Output = std::io::Result<usize>> + Send;
}

/// The write side of a socket, as its writer task uses it.
trait WriteHalf: Send + 'static {
    /// Writes some of `slices`.
    fn write_vectored(
        &mut self,
        slices: &[IoSlice<'_>],
    ) -> impl Future<Output = std::io::Result<usize>> + Send;
    /// Shuts down the write side.
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;
}

/// Any byte stream (TLS, say), split.
struct Split<T>(T);

impl<R: AsyncRead + Unpin + Send + 'static> ReadHalf for Split<R> {
    async fn read_into(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        buf.reserve(READ_CHUNK);
        self.0.read_buf(buf).await
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> WriteHalf for Split<W> {
    async fn write_vectored(&mut self, slices: &[IoSlice<'_>]) -> std::io::Result<usize> {
        self.0.write_vectored(slices).await
    }
    async fn shutdown(&mut self) {
        let _ = self.0.shutdown().await;
    }
}

/// A plain TCP socket shared by the reader task, the writer task and the driver.
struct SharedTcp(Arc<TcpStream>);

impl ReadHalf for SharedTcp {
    async fn read_into(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        loop {
            // Reserve only once there is something to read: an idle socket holds no buffer.
            self.0.readable().await?;
            buf.reserve(READ_CHUNK);
            match self.0.try_read_buf(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                read => return read,
            }
        }
    }
}

impl WriteHalf for SharedTcp {
    async fn write_vectored(&mut self, slices: &[IoSlice<'_>]) -> std::io::Result<usize> {
        loop {
            self.0.writable().await?;
            match self.0.try_write_vectored(slices) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                written => return written,
            }
        }
    }
    async fn shutdown(&mut self) {
        let _ = socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write);
    }
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

    /// Serves a TCP stream (Nagle off); returns its id. The driver may write to it directly.
    pub fn add_tcp(&mut self, stream: TcpStream, framing: Framing, kind: K) -> SocketId {
        let _ = stream.set_nodelay(true);
        let tcp = Arc::new(stream);
        let id = self.take_id();
        let mut socket = Socket::spawn(id, SharedTcp(tcp.clone()), framing, self.events.clone());
        socket.direct = Some(tcp);
        self.sockets.insert(id, (socket, kind));
        id
    }

    /// Serves a connection from a [`crate::net::Net`]: directly written if it is tokio TCP.
    pub fn add_conn(&mut self, conn: crate::net::Conn, framing: Framing, kind: K) -> SocketId {
        match conn {
            crate::net::Conn::Tcp(stream) => self.add_tcp(stream, framing, kind),
            crate::net::Conn::Other(stream) => self.add_stream(stream, framing, kind),
        }
    }

    /// Serves any byte stream (a TLS session, say); returns its id.
    pub fn add_stream<S>(&mut self, stream: S, framing: Framing, kind: K) -> SocketId
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(stream);
        let id = self.take_id();
        let mut socket = Socket::spawn(id, Split(read), framing, self.events.clone());
        socket.writer = Some(Writer::start(id, Split(write), self.events.clone()));
        self.sockets.insert(id, (socket, kind));
        id
    }

    fn take_id(&mut self) -> SocketId {
        let id = self.next_id;
        self.next_id += 1;
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
    Chunks(Vec<Bytes>),
    Shutdown,
}

/// The socket is stuck (its write queue is full) or gone: the caller closes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stuck;

/// The driver's handle on a socket.
#[derive(Debug)]
pub struct Socket {
    id: SocketId,
    paused: watch::Sender<bool>,
    reader: JoinHandle<()>,
    /// The writer task: started at once for a split stream; for plain TCP only when a write
    /// cannot go out directly (an idle connection has none).
    writer: Option<Writer>,
    /// A plain TCP socket the driver writes to itself while nothing is queued.
    direct: Option<Arc<TcpStream>>,
    /// Where a lazily started writer reports.
    events: mpsc::Sender<SocketEvent>,
    /// Bytes queued to the writer task and not yet reported written.
    queued: usize,
}

/// A socket's writer task and its queue.
#[derive(Debug)]
struct Writer {
    writes: mpsc::Sender<WriteCmd>,
    task: JoinHandle<()>,
}

impl Writer {
    /// Starts the task that writes what is queued to `write` and reports it as socket `id`.
    fn start(id: SocketId, mut write: impl WriteHalf, events: mpsc::Sender<SocketEvent>) -> Writer {
        let (writes, mut queue) = mpsc::channel::<WriteCmd>(WRITE_QUEUE);
        let task = tokio::spawn(async move {
            let mut batch: Vec<Bytes> = Vec::new();
            while let Some(first) = queue.recv().await {
                // Take what else is already queued, so one vectored write (and one report)
                // covers several chunks.
                let mut next = Some(first);
                let mut shutdown = false;
                let mut batched = 0;
                while let Some(cmd) = next.take() {
                    match cmd {
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
                    write.shutdown().await;
                }
            }
            // The driver dropped the handle: everything queued was written; close.
            write.shutdown().await;
        });
        Writer { writes, task }
    }
}

impl Socket {
    /// Starts the reader task of socket `id` (the writer is the caller's to add).
    fn spawn(
        id: SocketId,
        mut read: impl ReadHalf,
        framing: Framing,
        events: mpsc::Sender<SocketEvent>,
    ) -> Socket {
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
                let read = read.read_into(&mut buf).await;
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
                    Ok(n) => {
                        if n < KEEP_BUFFER_AFTER && buf.is_empty() {
                            buf = BytesMut::new();
                        }
                        continue;
                    }
                    Err(_) => SocketEvent::Failed(id),
                };
                let _ = read_events.send(end).await;
                return;
            }
        });
        Socket {
            id,
            paused: paused_tx,
            reader,
            writer: None,
            direct: None,
            events,
            queued: 0,
        }
    }

    /// The writer task, started now for a plain TCP socket that has none yet.
    fn writer(&mut self) -> Option<&Writer> {
        if self.writer.is_none()
            && let Some(tcp) = &self.direct
        {
            let write = SharedTcp(tcp.clone());
            self.writer = Some(Writer::start(self.id, write, self.events.clone()));
        }
        self.writer.as_ref()
    }

    /// Writes `chunks` in order: at once when the socket is plain TCP and nothing is queued
    /// ahead, the rest through the writer task (reported later as `Written`). Returns how many
    /// bytes were written at once.
    pub fn write_chunks(&mut self, mut chunks: Vec<Bytes>) -> Result<usize, Stuck> {
        let mut now = 0;
        if self.queued == 0
            && let Some(tcp) = &self.direct
        {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let count = gather(&chunks, &mut slices);
            // WouldBlock or an error: the writer task takes it all and reports what happens.
            if let Ok(written) = tcp.try_write_vectored(&slices[..count]) {
                now = written;
                consume(&mut chunks, written);
            }
        }
        let rest: usize = chunks.iter().map(Bytes::len).sum();
        if rest > 0 {
            self.writer()
                .ok_or(Stuck)?
                .writes
                .try_send(WriteCmd::Chunks(chunks))
                .map_err(|_| Stuck)?;
            self.queued += rest;
        }
        Ok(now)
    }

    /// The writer task reported `n` queued bytes written.
    pub fn reported_written(&mut self, n: usize) {
        self.queued = self.queued.saturating_sub(n);
    }

    /// Shuts down the write side after the queued bytes.
    pub fn shutdown(&mut self) {
        if self.queued == 0
            && let Some(tcp) = &self.direct
        {
            let _ = socket2::SockRef::from(&**tcp).shutdown(std::net::Shutdown::Write);
        } else if let Some(writer) = self.writer() {
            let _ = writer.writes.try_send(WriteCmd::Shutdown);
        }
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
        if let Some(writer) = self.writer {
            writer.task.abort();
        }
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
            let mut sink = Split(Trickle {
                out: Vec::new(),
                step,
            });
            let mut batch = chunks.clone();
            write_batch(&mut sink, &mut batch).await.unwrap();
            assert_eq!(sink.0.out, expected, "step {step}");
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
            assert_eq!(
                outbox.push(7, frame.encode()),
                None,
                "one socket, one batch"
            );
        }
        let (socket, chunks) = outbox.take().unwrap();
        assert_eq!(socket, 7);
        assert_eq!(outbox.take(), None);
        // A frame for another socket closes the batch of the first.
        outbox.push(1, Frame::Ping { nonce: 2 }.encode());
        let (closed, _) = outbox.push(2, Frame::Ping { nonce: 3 }.encode()).unwrap();
        assert_eq!(closed, 1);
        assert_eq!(outbox.take().map(|(s, _)| s), Some(2));
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(joined, expected.to_vec());
        // Ping, small DATA and the large DATA's header coalesced; the large payload as it was;
        // the FIN after it.
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[1].as_ptr(), large.as_ptr());
    }

    /// A write made while earlier bytes wait in the writer task's queue goes behind them, even
    /// when the kernel has room again: on a single-threaded runtime the writer task cannot run
    /// in between, so a direct write here would overtake the queued bytes.
    #[tokio::test(flavor = "current_thread")]
    async fn a_write_never_overtakes_queued_bytes() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        let (events_tx, _events) = mpsc::channel(1024);
        let mut table = SocketTable::new(events_tx);
        let ours = TcpStream::from_std(ours).unwrap();
        ours.writable().await.unwrap(); // tokio learns the socket is writable
        let id = table.add_tcp(ours, Framing::Raw, ());
        let first = Bytes::from(
            (0..8 << 20)
                .map(|i: u32| (i % 251) as u8)
                .collect::<Vec<u8>>(),
        );
        let second = Bytes::from_static(b"second write");
        let socket = &mut table.get_mut(id).unwrap().0;
        let direct = socket.write_chunks(vec![first.clone()]).unwrap();
        assert!(
            direct > 0 && direct < first.len(),
            "8 MiB fit the kernel at once: {direct}"
        );
        // The kernel drains some of what was written directly; the writer task has not run.
        let mut drained = vec![0; 256 * 1024];
        peer.read_exact(&mut drained).unwrap();
        assert_eq!(
            socket.write_chunks(vec![second.clone()]).unwrap(),
            0,
            "the second write went first"
        );
        table.remove(id).unwrap().0.close();
        let rest = tokio::task::spawn_blocking(move || {
            let mut rest = Vec::new();
            peer.read_to_end(&mut rest).unwrap();
            rest
        })
        .await
        .unwrap();
        let mut expected = first.to_vec();
        expected.extend_from_slice(&second);
        assert!(
            [drained, rest].concat() == expected,
            "bytes reordered or lost"
        );
    }

    #[tokio::test]
    async fn a_writer_that_takes_nothing_is_an_error_not_a_hang() {
        let mut sink = Split(Trickle {
            out: Vec::new(),
            step: 0,
        });
        let mut batch = vec![Bytes::from_static(b"abc")];
        let err = write_batch(&mut sink, &mut batch).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WriteZero);
    }
}
