//! Where the drivers get their connections: the machine's TCP ([`TokioNet`], the default), or
//! any other network of the same shape — a test's simulated network (turmoil), say. Plain tokio
//! TCP connections keep the drivers' direct-write path; any other stream goes through a reader
//! and a writer task.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A future the network hands back.
pub type NetFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Any byte stream a network connects.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ByteStream for T {}

/// One connection.
pub enum Conn {
    /// A tokio TCP stream (the drivers may write it directly).
    Tcp(TcpStream),
    /// Any other stream.
    Other(Box<dyn ByteStream>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conn::Tcp(s) => write!(f, "Conn::Tcp({:?})", s.peer_addr().ok()),
            Conn::Other(_) => f.write_str("Conn::Other"),
        }
    }
}

impl Conn {
    /// The connection as a boxed stream (for layers that take any stream: TLS, gRPC).
    pub fn boxed(self) -> Box<dyn ByteStream> {
        match self {
            Conn::Tcp(s) => Box::new(s),
            Conn::Other(s) => s,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Other(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Other(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Other(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::Other(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Other(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Other(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Accepts connections.
pub trait Listener: Send {
    /// The next connection and its peer's address.
    fn accept(&mut self) -> NetFuture<'_, io::Result<(Conn, SocketAddr)>>;
}

/// Connects and listens.
pub trait Net: Send + Sync + std::fmt::Debug + 'static {
    /// Connects to `host:port`.
    fn connect(&self, host: String, port: u16) -> NetFuture<'static, io::Result<Conn>>;
    /// Listens on `addr` (`host:port`).
    fn bind(&self, addr: String) -> NetFuture<'static, io::Result<Box<dyn Listener>>>;
}

/// The machine's TCP through tokio.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioNet;

impl Listener for TcpListener {
    fn accept(&mut self) -> NetFuture<'_, io::Result<(Conn, SocketAddr)>> {
        Box::pin(async move {
            let (stream, addr) = TcpListener::accept(self).await?;
            let _ = stream.set_nodelay(true);
            Ok((Conn::Tcp(stream), addr))
        })
    }
}

impl Net for TokioNet {
    fn connect(&self, host: String, port: u16) -> NetFuture<'static, io::Result<Conn>> {
        Box::pin(async move {
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            let _ = stream.set_nodelay(true);
            Ok(Conn::Tcp(stream))
        })
    }

    fn bind(&self, addr: String) -> NetFuture<'static, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let listener: Box<dyn Listener> = Box::new(TcpListener::bind(addr).await?);
            Ok(listener)
        })
    }
}
