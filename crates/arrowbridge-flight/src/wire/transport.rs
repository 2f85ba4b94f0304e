//! One write per burst of small HTTP/2 frames.
//!
//! h2 writes a large DATA frame's payload straight from its buffer (vectored), and so must
//! flush the socket after each one before it can encode the next frame. A gRPC response of
//! 8 KiB therefore leaves in two writes (headers and data, then the trailers), and a request
//! in up to three (headers, data, the empty frame that ends the stream). On loopback each
//! write runs the receiver's network stack and wakes it: the writes, not the bytes, are most
//! of a small call's cost.
//!
//! [`Coalesce`] sits between h2 and the socket. Writes that fit in [`SMALL`] bytes are
//! gathered, and the first flush of a burst is put off until the task that owns the
//! connection runs again (it is woken at once): by then h2 has encoded the rest of the
//! frames it had queued, and the burst leaves in one `writev`. The second flush writes, so
//! nothing waits longer than one more turn of the connection's task. Larger writes go
//! straight to the socket, behind what was gathered, in the same `writev`: bulk transfers
//! copy nothing more.
//!
//! What was put off is written by the next read or flush, whichever comes first: h2's
//! connection task reads, then flushes, on every turn, as does a TLS handshake.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes up to this size are gathered; larger ones go to the socket at once.
pub const SMALL: usize = 64 << 10;

/// A socket whose small writes are gathered into one (see the module's documentation).
#[derive(Debug)]
pub struct Coalesce<T> {
    inner: T,
    /// Bytes accepted but not yet written.
    pending: Vec<u8>,
    /// Whether a flush was put off since `pending` was last empty.
    deferred: bool,
    /// Whether the last write carried a payload of its own besides h2's buffer.
    chained: bool,
    mode: Mode,
}

/// When [`Coalesce`] puts a flush off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Only a flush that follows a write with a payload of its own (h2 must flush before it
    /// encodes another frame); the next read or flush writes. Safe under any protocol that
    /// reads or flushes again on its next turn (TLS, whose handshake does not flush twice),
    /// and no extra turn for a burst of one write: for servers, whose tasks are woken on
    /// another thread.
    AfterChained,
    /// The first flush of every burst; only a flush writes, so frames that other tasks queue
    /// for the next turn leave in the same write. Only for h2 directly over the socket, whose
    /// connection task ends every turn with a flush: for clients.
    WholeTurn,
}

impl<T> Coalesce<T> {
    pub fn new(inner: T, mode: Mode) -> Self {
        Coalesce {
            inner,
            pending: Vec::new(),
            deferred: false,
            chained: false,
            mode,
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes what is pending, then as much of `bufs` as the socket takes in the same call:
    /// `Ready(n)` once `pending` is empty, `n` counting bytes of `bufs` only.
    fn poll_write_through(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        while !self.pending.is_empty() {
            let mut slices = Vec::with_capacity(bufs.len() + 1);
            slices.push(IoSlice::new(&self.pending));
            slices.extend(bufs.iter().map(|b| IoSlice::new(b)));
            let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n < self.pending.len() {
                self.pending.drain(..n);
                continue;
            }
            let beyond = n - self.pending.len();
            self.pending.clear();
            self.deferred = false;
            if beyond > 0 || bufs.iter().all(|b| b.is_empty()) {
                return Poll::Ready(Ok(beyond));
            }
        }
        self.deferred = false;
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        this.chained = bufs.len() > 1;
        if this.pending.len() + len <= SMALL {
            for buf in bufs {
                this.pending.extend_from_slice(buf);
            }
            return Poll::Ready(Ok(len));
        }
        this.poll_write_through(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pending.is_empty() {
            if !this.deferred && (this.chained || this.mode == Mode::WholeTurn) {
                // The rest of the burst is encoded before the task runs again.
                this.deferred = true;
                cx.waker().wake_by_ref();
                return Poll::Ready(Ok(()));
            }
            ready!(this.poll_write_through(cx, &[]))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_through(cx, &[]))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.deferred && this.mode == Mode::AfterChained {
            // The flush put off has had its turn.
            ready!(this.poll_write_through(cx, &[]))?;
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Coalesce<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Where a client's [`Connector`] connects.
#[derive(Clone, Debug)]
pub enum Address {
    /// The host and port of the URI it is given (TCP, with `TCP_NODELAY`).
    Tcp,
    /// A Unix socket.
    Unix(std::path::PathBuf),
}

/// Makes a client's connections: sockets wrapped in [`Coalesce`], for tonic to speak HTTP/2
/// (and TLS, when the endpoint asks for it, with `tls` true) over.
#[derive(Clone, Debug)]
pub struct Connector {
    pub address: Address,
    pub tls: bool,
}

/// A connected socket of either kind.
#[derive(Debug)]
pub enum Socket {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<Coalesce<Socket>>;
    type Error = io::Error;
    type Future = futures::future::BoxFuture<'static, io::Result<Self::Response>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let address = self.address.clone();
        let mode = if self.tls {
            Mode::AfterChained
        } else {
            Mode::WholeTurn
        };
        Box::pin(async move {
            let socket = address.connect(&uri).await?;
            Ok(hyper_util::rt::TokioIo::new(Coalesce::new(socket, mode)))
        })
    }
}

impl Address {
    /// A new socket to this address (for TCP, to `uri`'s host and port).
    pub async fn connect(&self, uri: &http::Uri) -> io::Result<Socket> {
        Ok(match self {
            Address::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path).await?;
                size_send_buffer(&stream);
                Socket::Unix(stream)
            }
            Address::Tcp => {
                let host = uri.host().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}"))
                })?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let default = if uri.scheme_str() == Some("https") {
                    443
                } else {
                    80
                };
                let port = uri.port_u16().unwrap_or(default);
                let stream = tokio::net::TcpStream::connect((host, port)).await?;
                stream.set_nodelay(true)?;
                Socket::Tcp(stream)
            }
        })
    }
}

/// How much a Unix socket may hold that its reader has not taken yet (the kernel doubles it
/// for its bookkeeping).
///
/// Neither small nor large. A Unix socket hands the sender's pages to the reader, who copies
/// the bytes out while they are still in the CPU's caches when little is queued; but a
/// sender that may queue less than one of the 1 MiB frames the server asks for stops (and
/// is woken) several times a frame. 256 MiB Flight transfers between two processes on two
/// cores, against TCP's in turns: with 4 MiB, puts at 0.89× and gets at 1.03×; with 128 KiB,
/// puts at 0.82-0.96× and gets at 1.33-1.47×; with 1 MiB, puts at 0.96-1.10× and gets at
/// 1.28-1.48×. Set rather than left to `net.core.wmem_default`, which hosts tune for other
/// traffic.
pub(crate) const UNIX_SEND_BUFFER: libc::c_int = 1 << 20;

/// Asks for a send buffer of [`UNIX_SEND_BUFFER`] on `socket` (best effort: another size
/// only costs speed).
pub(crate) fn size_send_buffer(socket: &impl std::os::fd::AsRawFd) {
    let size = UNIX_SEND_BUFFER;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live c_int, on a descriptor
    // the caller owns.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Socket::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A channel whose requests end with their last DATA frame (see [`Lookahead`]): for calls
/// whose whole request is at hand when they start (actions, kernel calls), not for uploads.
#[derive(Clone, Debug)]
pub struct WholeRequests(pub tonic::transport::Channel);

impl tower_service::Service<http::Request<tonic::body::Body>> for WholeRequests {
    type Response = <tonic::transport::Channel as tower_service::Service<
        http::Request<tonic::body::Body>,
    >>::Response;
    type Error = <tonic::transport::Channel as tower_service::Service<
        http::Request<tonic::body::Body>,
    >>::Error;
    type Future = <tonic::transport::Channel as tower_service::Service<
        http::Request<tonic::body::Body>,
    >>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        self.0
            .call(request.map(|body| tonic::body::Body::new(Lookahead::new(body))))
    }
}

/// A body that looks one frame ahead, so that it knows it has ended when it hands out its
/// last frame. tonic's request bodies learn it only when polled once more, and hyper then
/// ends the stream with an empty DATA frame of its own: a third write of a small request.
#[derive(Debug)]
pub struct Lookahead {
    inner: tonic::body::Body,
    next: Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>,
    ended: bool,
}

impl Lookahead {
    pub fn new(inner: tonic::body::Body) -> Self {
        Lookahead {
            inner,
            next: None,
            ended: false,
        }
    }
}

impl http_body::Body for Lookahead {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = match this.next.take() {
            Some(frame) => frame,
            None if this.ended => return Poll::Ready(None),
            None => match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(frame) => frame,
                None => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
            },
        };
        if !this.ended {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(next)) => this.next = Some(next),
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => {}
            }
        }
        Poll::Ready(Some(frame))
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.next.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    /// A socket that records each write call, taking at most `limit` bytes per call.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        limit: Option<usize>,
        flushes: usize,
        shut: bool,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(
                &mut Context::from_waker(Waker::noop()),
                &[IoSlice::new(buf)],
            )
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let mut all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            if let Some(limit) = this.limit {
                all.truncate(limit);
            }
            let n = all.len();
            this.writes.push(all);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().shut = true;
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Harness {
        socket: Coalesce<Recorder>,
        wakes: Arc<Wakes>,
    }

    impl Harness {
        fn new(mode: Mode) -> Self {
            Harness {
                socket: Coalesce::new(Recorder::default(), mode),
                wakes: Arc::default(),
            }
        }

        fn cx<R>(&mut self, f: impl FnOnce(Pin<&mut Coalesce<Recorder>>, &mut Context) -> R) -> R {
            let waker = Waker::from(self.wakes.clone());
            f(Pin::new(&mut self.socket), &mut Context::from_waker(&waker))
        }

        fn write(&mut self, bufs: &[&[u8]]) -> usize {
            let slices: Vec<IoSlice> = bufs.iter().map(|b| IoSlice::new(b)).collect();
            match self.cx(|s, cx| s.poll_write_vectored(cx, &slices)) {
                Poll::Ready(Ok(n)) => n,
                other => panic!("{other:?}"),
            }
        }

        fn flush(&mut self) {
            assert!(matches!(
                self.cx(|s, cx| s.poll_flush(cx)),
                Poll::Ready(Ok(()))
            ));
        }

        fn read(&mut self) {
            let mut space = [0u8; 8];
            let mut buf = ReadBuf::new(&mut space);
            assert!(self.cx(|s, cx| s.poll_read(cx, &mut buf)).is_pending());
        }

        fn writes(&self) -> &[Vec<u8>] {
            &self.socket.inner.writes
        }

        fn wakes(&self) -> usize {
            self.wakes.0.load(Ordering::SeqCst)
        }
    }

    /// An h2 response: headers and a chained payload, the flush h2 needs before its next
    /// frame, the trailers, and the flush that ends the turn.
    #[test]
    fn a_response_with_a_chained_payload_leaves_in_one_write() {
        let mut h = Harness::new(Mode::AfterChained);
        assert_eq!(h.write(&[b"headers", &[7u8; 8192]]), 7 + 8192);
        h.flush();
        assert!(h.writes().is_empty(), "the flush between frames is put off");
        assert_eq!(h.wakes(), 1, "in case it was the turn's last");
        assert_eq!(h.write(&[b"trailers"]), 8);
        h.flush();
        assert_eq!(h.writes().len(), 1);
        let mut expected = b"headers".to_vec();
        expected.extend([7u8; 8192]);
        expected.extend(b"trailers");
        assert_eq!(h.writes()[0], expected);
        assert!(h.socket.inner.flushes >= 1);
    }

    #[test]
    fn a_turn_that_ends_with_a_chained_payload_writes_it_on_the_next_turn() {
        let mut h = Harness::new(Mode::AfterChained);
        h.write(&[b"head", &[1u8; 300]]);
        h.flush();
        assert!(h.writes().is_empty());
        assert_eq!(h.wakes(), 1);
        h.read(); // the next turn begins with a read
        assert_eq!(h.writes().len(), 1);
        assert_eq!(h.writes()[0].len(), 304);
    }

    #[test]
    fn after_chained_writes_a_plain_burst_at_once() {
        let mut h = Harness::new(Mode::AfterChained);
        h.write(&[b"a whole unary response"]);
        h.flush();
        assert_eq!(h.writes(), [b"a whole unary response".to_vec()]);
        assert_eq!(h.wakes(), 0);
    }

    #[test]
    fn after_chained_writes_what_was_put_off_on_the_next_read() {
        // A TLS handshake flushes once, then waits to read.
        let mut h = Harness::new(Mode::AfterChained);
        h.write(&[b"hello", b"certificate"]);
        h.flush();
        assert!(h.writes().is_empty());
        h.read();
        assert_eq!(h.writes(), [b"hellocertificate".to_vec()]);
    }

    #[test]
    fn whole_turn_keeps_a_burst_across_a_read_until_the_next_flush() {
        // A client's request: the headers in one turn, the body (queued by another task)
        // in the next, which begins with a read.
        let mut h = Harness::new(Mode::WholeTurn);
        h.write(&[b"headers"]);
        h.flush();
        assert_eq!(h.wakes(), 1);
        h.read();
        assert!(h.writes().is_empty());
        h.write(&[b"body"]);
        h.flush();
        assert_eq!(h.writes(), [b"headersbody".to_vec()]);
    }

    #[test]
    fn a_large_write_goes_out_behind_what_was_gathered_in_one_call() {
        let mut h = Harness::new(Mode::WholeTurn);
        h.write(&[b"headers"]);
        let big = vec![1u8; SMALL + 1];
        assert_eq!(h.write(&[&big]), big.len());
        assert_eq!(h.writes().len(), 1);
        assert_eq!(h.writes()[0].len(), 7 + big.len());
        assert!(h.socket.pending.is_empty());
    }

    #[test]
    fn partial_writes_never_lose_or_reorder_bytes() {
        let mut h = Harness::new(Mode::WholeTurn);
        h.socket.inner.limit = Some(5);
        h.write(&[b"0123456789"]);
        let big: Vec<u8> = (0..=255u8).cycle().take(SMALL + 10).collect();
        let mut sent = 0;
        while sent < big.len() {
            sent += h.write(&[&big[sent..]]);
        }
        h.flush();
        h.flush();
        let out: Vec<u8> = h.writes().concat();
        let mut expected = b"0123456789".to_vec();
        expected.extend(&big);
        assert_eq!(out, expected);
        assert!(h.writes().iter().all(|w| !w.is_empty() && w.len() <= 5));
    }

    #[test]
    fn shutdown_writes_what_is_pending_first() {
        let mut h = Harness::new(Mode::WholeTurn);
        h.write(&[b"goaway"]);
        h.flush();
        assert!(matches!(
            h.cx(|s, cx| s.poll_shutdown(cx)),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(h.writes(), [b"goaway".to_vec()]);
        assert!(h.socket.inner.shut);
    }

    #[test]
    fn lookahead_ends_the_stream_with_its_last_frame() {
        use http_body::Body as _;
        let chunks =
            futures::stream::iter([&b"one"[..], b"two"].map(|c| {
                Ok::<_, tonic::Status>(http_body::Frame::data(bytes::Bytes::from_static(c)))
            }));
        let body = tonic::body::Body::new(http_body_util::StreamBody::new(chunks));
        let mut body = Lookahead::new(body);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut next = |body: &mut Lookahead| match Pin::new(body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().ok(),
            Poll::Ready(None) => None,
            other => panic!("{other:?}"),
        };
        assert_eq!(next(&mut body).as_deref(), Some(&b"one"[..]));
        assert!(!body.is_end_stream());
        assert_eq!(next(&mut body).as_deref(), Some(&b"two"[..]));
        assert!(
            body.is_end_stream(),
            "known with the last frame, not after it"
        );
        assert_eq!(next(&mut body), None);
    }
}
