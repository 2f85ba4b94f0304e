//! A large DoGet over a connection of its own, read from the socket straight into the
//! destination.
//!
//! [`crate::direct_get`] parses a DoGet answer as hyper hands over its HTTP/2 data frames:
//! the kernel copies every byte into hyper's buffer, and the parser copies it again into the
//! destination. For a large get over a plain connection (TCP or a Unix socket, not TLS),
//! the client instead speaks the little HTTP/2 that one call needs, on a socket of its own,
//! and reads each data frame's payload with a `read` whose buffer is the destination rows
//! the bytes belong to ([`Parser::landing_slot`]): the kernel's copy is the only one.
//! Everything else (frame headers, gRPC prefixes, message headers, padding) goes through a
//! small buffer and the same [`Parser`], so every message is checked as before.
//!
//! The conversation: the client preface; SETTINGS (no server push, stream windows of
//! 2^31 - 1 bytes, frames of up to 16 MiB); a connection WINDOW_UPDATE to 2^31 - 1; the
//! request's HEADERS and DATA. Of the answer, SETTINGS and PINGs are acknowledged, windows
//! are topped up every 1 GiB received, header blocks are HPACK-decoded (`loona-hpack`), and
//! the `grpc-status` of the trailers is the call's status. An RST_STREAM, a GOAWAY before
//! the stream, or the end of the connection before the trailers ends the call with a status
//! that says so.

use std::io;

use arrow_schema::Schema;
use arrowbridge::landing::Part;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tonic::{Code, Status};

use crate::direct_get::{ticket_request, Parser, DO_GET};

/// What an HTTP/2 client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame types (RFC 9113, section 6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
/// Frame flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// SETTINGS parameters.
const ENABLE_PUSH: u16 = 0x2;
const INITIAL_WINDOW_SIZE: u16 = 0x4;
const MAX_FRAME_SIZE: u16 = 0x5;
/// The one stream of the connection.
const STREAM: u32 = 1;
/// The largest flow-control window.
const WINDOW: u32 = (1 << 31) - 1;
/// A connection's window before any WINDOW_UPDATE.
const DEFAULT_WINDOW: u32 = 65_535;
/// The largest frame the client accepts.
const MAX_FRAME: u32 = (1 << 24) - 1;
/// Frames the client sends are at most this large: the default, before the server's
/// SETTINGS say more.
const SEND_FRAME: usize = 16_384;
/// The windows are topped up once this many bytes came.
const TOP_UP: u64 = 1 << 30;
/// Header blocks (with their CONTINUATION frames) longer than this are refused.
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Bytes read ahead for everything that does not land in place.
const BUFFER: usize = 64 << 10;

/// Gets are read this way from this many bytes on: below, the connection of their own costs
/// more than the copy it saves.
pub(crate) const FROM_BYTES: usize = 8 << 20;

/// Fetches the DoGet stream of `ticket` over `io`, a new connection to the server, into
/// `part`, as [`crate::direct_get::do_get_into`] does over a shared channel. `authority` is
/// the request's `:authority` (`host:port`); `authorization` its header of that name.
pub(crate) async fn do_get_into<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    authority: &str,
    authorization: Option<&http::HeaderValue>,
    ticket: &[u8],
    what: &str,
    expected: &Schema,
    part: &mut Part<'_>,
) -> Result<(), Status> {
    let mut connection = Connection::new(io, what);
    let request = request(authority, authorization, &ticket_request(ticket, what)?);
    connection.send(&request).await?;
    let mut parser = Parser::new(what, expected, part);
    let status = connection.answer(&mut parser).await?;
    let _ = connection.send(&goaway()).await; // the server may have closed already
    match status.code() {
        Code::Ok => parser.finish(),
        _ => Err(status),
    }
}

/// Appends a frame.
fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("frames are built below 16 MiB");
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Appends `block` as one frame of `kind` and as many CONTINUATION frames as it needs (for
/// HEADERS, `last` is END_HEADERS; for DATA, END_STREAM).
fn frames(out: &mut Vec<u8>, kind: u8, last: u8, block: &[u8]) {
    let mut chunks = block.chunks(SEND_FRAME).peekable();
    let mut kind = kind;
    if chunks.peek().is_none() {
        frame(out, kind, last, STREAM, &[]);
    }
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() { last } else { 0 };
        frame(out, kind, flags, STREAM, chunk);
        if kind == HEADERS {
            kind = CONTINUATION;
        }
    }
}

/// Everything the client sends: the preface, its settings, and the request.
fn request(authority: &str, authorization: Option<&http::HeaderValue>, body: &[u8]) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    let mut settings = Vec::with_capacity(18);
    for (id, value) in [
        (ENABLE_PUSH, 0),
        (INITIAL_WINDOW_SIZE, WINDOW),
        (MAX_FRAME_SIZE, MAX_FRAME),
    ] {
        settings.extend_from_slice(&id.to_be_bytes());
        settings.extend_from_slice(&value.to_be_bytes());
    }
    frame(&mut out, SETTINGS, 0, 0, &settings);
    let increment = WINDOW - DEFAULT_WINDOW;
    frame(&mut out, WINDOW_UPDATE, 0, 0, &increment.to_be_bytes());
    let mut headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", DO_GET.as_bytes()),
        (b":authority", authority.as_bytes()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ];
    if let Some(value) = authorization {
        headers.push((b"authorization", value.as_bytes()));
    }
    let block = loona_hpack::Encoder::new().encode(headers);
    frames(&mut out, HEADERS, END_HEADERS, &block);
    frames(&mut out, DATA, END_STREAM, body);
    out
}

/// A GOAWAY without error: the client is done with the connection.
fn goaway() -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    frame(&mut out, GOAWAY, 0, 0, &[0; 8]);
    out
}

/// The client's end of the connection.
struct Connection<'w, S> {
    io: S,
    what: &'w str,
    /// Bytes read ahead: `buffer[start..end]` are not taken yet.
    buffer: Box<[u8]>,
    start: usize,
    end: usize,
    /// Data bytes received since the windows were last topped up.
    unacknowledged: u64,
}

/// A frame's header.
struct Head {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl<'w, S: AsyncRead + AsyncWrite + Unpin> Connection<'w, S> {
    fn new(io: S, what: &'w str) -> Self {
        Connection {
            io,
            what,
            buffer: vec![0; BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            unacknowledged: 0,
        }
    }

    fn broken(&self, e: io::Error) -> Status {
        Status::unavailable(format!("{}: the connection broke off: {e}", self.what))
    }

    fn bad(&self, message: impl std::fmt::Display) -> Status {
        Status::internal(format!("{}: the server's HTTP/2 {message}", self.what))
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Status> {
        self.io.write_all(bytes).await.map_err(|e| self.broken(e))
    }

    /// Reads more into the buffer (at least one byte).
    async fn fill(&mut self) -> Result<(), Status> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buffer.len() {
            self.buffer.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let n = self
            .io
            .read(&mut self.buffer[self.end..])
            .await
            .map_err(|e| self.broken(e))?;
        if n == 0 {
            return Err(self.broken(io::ErrorKind::UnexpectedEof.into()));
        }
        self.end += n;
        Ok(())
    }

    /// The next `n` bytes (at most [`BUFFER`]), as a slice of the buffer.
    async fn take(&mut self, n: usize) -> Result<&[u8], Status> {
        while self.end - self.start < n {
            self.fill().await?;
        }
        self.start += n;
        Ok(&self.buffer[self.start - n..self.start])
    }

    /// The next `n` bytes, into `out`.
    async fn take_into(&mut self, mut n: usize, out: &mut Vec<u8>) -> Result<(), Status> {
        while n > 0 {
            if self.start == self.end {
                self.fill().await?;
            }
            let k = n.min(self.end - self.start);
            out.extend_from_slice(&self.buffer[self.start..self.start + k]);
            (self.start, n) = (self.start + k, n - k);
        }
        Ok(())
    }

    async fn head(&mut self) -> Result<Head, Status> {
        let h = self.take(9).await?;
        Ok(Head {
            len: u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize,
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        })
    }

    /// The `n` payload bytes of a data frame, to the parser: a column's values are read
    /// from the socket into their place, the rest through the buffer.
    async fn data(
        &mut self,
        parser: &mut Parser<'_, Part<'_>>,
        mut n: usize,
    ) -> Result<(), Status> {
        while n > 0 {
            if self.start < self.end {
                let k = n.min(self.end - self.start);
                parser.feed(&self.buffer[self.start..self.start + k])?;
                (self.start, n) = (self.start + k, n - k);
            } else if let Some(slot) = parser.landing_slot(n) {
                let k = self.io.read(slot).await.map_err(|e| self.broken(e))?;
                if k == 0 {
                    return Err(self.broken(io::ErrorKind::UnexpectedEof.into()));
                }
                parser.landed(k)?;
                n -= k;
            } else {
                self.fill().await?;
            }
        }
        Ok(())
    }

    /// Counts `n` bytes of data frames; tops up the windows every [`TOP_UP`] bytes.
    async fn received(&mut self, n: usize) -> Result<(), Status> {
        self.unacknowledged += n as u64;
        if self.unacknowledged >= TOP_UP {
            let increment = u32::try_from(self.unacknowledged).expect("below 2^31");
            let mut out = Vec::with_capacity(26);
            frame(&mut out, WINDOW_UPDATE, 0, 0, &increment.to_be_bytes());
            frame(&mut out, WINDOW_UPDATE, 0, STREAM, &increment.to_be_bytes());
            self.send(&out).await?;
            self.unacknowledged = 0;
        }
        Ok(())
    }

    /// Reads the answer to its end: its data to `parser`; the call's status.
    async fn answer(&mut self, parser: &mut Parser<'_, Part<'_>>) -> Result<Status, Status> {
        let mut block = Vec::new();
        let mut block_ends_stream = false;
        let mut decoder = loona_hpack::Decoder::new();
        let mut headers_seen = false;
        let mut payload = Vec::new();
        loop {
            let head = self.head().await?;
            let ours = head.stream == STREAM;
            match head.kind {
                DATA if ours => {
                    let mut len = head.len;
                    let mut padding = 0;
                    if head.flags & PADDED != 0 {
                        padding = usize::from(*self.take(1).await?.first().unwrap_or(&0));
                        len = len
                            .checked_sub(1 + padding)
                            .ok_or_else(|| self.bad("DATA frame's padding exceeds its length"))?;
                    }
                    if !headers_seen {
                        return Err(self.bad("DATA frame before the response's headers"));
                    }
                    self.data(parser, len).await?;
                    payload.clear();
                    self.take_into(padding, &mut payload).await?;
                    self.received(head.len).await?;
                    if head.flags & END_STREAM != 0 {
                        return Err(Status::unavailable(format!(
                            "{}: the stream ended without a status",
                            self.what
                        )));
                    }
                }
                HEADERS | CONTINUATION if ours => {
                    if block.len() + head.len > MAX_HEADER_BLOCK {
                        return Err(self.bad("header block over 1 MiB"));
                    }
                    payload.clear();
                    self.take_into(head.len, &mut payload).await?;
                    let mut fragment = &payload[..];
                    if head.kind == HEADERS {
                        block_ends_stream = head.flags & END_STREAM != 0;
                        let mut padding = 0;
                        if head.flags & PADDED != 0 {
                            padding = usize::from(*fragment.first().unwrap_or(&0));
                            fragment = fragment.get(1..).unwrap_or_default();
                        }
                        if head.flags & PRIORITY != 0 {
                            fragment = fragment.get(5..).unwrap_or_default();
                        }
                        let end = fragment
                            .len()
                            .checked_sub(padding)
                            .ok_or_else(|| self.bad("HEADERS frame's padding exceeds it"))?;
                        fragment = &fragment[..end];
                    }
                    block.extend_from_slice(fragment);
                    if head.flags & END_HEADERS == 0 {
                        continue;
                    }
                    let fields = decoder
                        .decode(&block)
                        .map_err(|e| self.bad(format!("header block: {e}")))?;
                    block.clear();
                    let (status, map) = header_map(fields);
                    if !headers_seen {
                        headers_seen = true;
                        if status.as_deref() != Some(b"200".as_slice()) {
                            let status = status.map(|s| String::from_utf8_lossy(&s).into_owned());
                            return Err(Status::unknown(format!(
                                "{}: the server answered HTTP {}",
                                self.what,
                                status.as_deref().unwrap_or("without a status")
                            )));
                        }
                    }
                    let status = Status::from_header_map(&map);
                    if let Some(status) = &status {
                        if status.code() != Code::Ok {
                            return Ok(status.clone()); // at once, or in the trailers
                        }
                    }
                    if block_ends_stream {
                        return status.ok_or_else(|| {
                            Status::unavailable(format!(
                                "{}: the stream ended without a status",
                                self.what
                            ))
                        });
                    }
                }
                SETTINGS if head.stream == 0 => {
                    payload.clear();
                    self.take_into(head.len, &mut payload).await?;
                    if head.flags & ACK == 0 {
                        let mut out = Vec::with_capacity(9);
                        frame(&mut out, SETTINGS, ACK, 0, &[]);
                        self.send(&out).await?;
                    }
                }
                PING if head.stream == 0 => {
                    payload.clear();
                    self.take_into(head.len, &mut payload).await?;
                    if head.flags & ACK == 0 {
                        let mut out = Vec::with_capacity(17);
                        frame(&mut out, PING, ACK, 0, &payload);
                        self.send(&out).await?;
                    }
                }
                RST_STREAM if ours => {
                    let code = self.take(4).await?;
                    let code = u32::from_be_bytes([code[0], code[1], code[2], code[3]]);
                    return Err(reset(self.what, code));
                }
                GOAWAY if head.stream == 0 => {
                    payload.clear();
                    self.take_into(head.len, &mut payload).await?;
                    let field = |i: usize| {
                        let b = payload.get(i..i + 4).unwrap_or(&[0; 4]);
                        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
                    };
                    let (last, code) = (field(0) & 0x7fff_ffff, field(4));
                    if last < STREAM {
                        return Err(Status::unavailable(format!(
                            "{}: the server closed the connection before the call (HTTP/2 error {code})",
                            self.what
                        )));
                    }
                }
                // Anything else (WINDOW_UPDATE, PRIORITY, frames of other streams, unknown
                // types) asks nothing of a client that sends no more data.
                _ => {
                    payload.clear();
                    self.take_into(head.len, &mut payload).await?;
                }
            }
        }
    }
}

/// The `:status` of a decoded header block, and its other fields.
fn header_map(fields: Vec<(Vec<u8>, Vec<u8>)>) -> (Option<Vec<u8>>, http::HeaderMap) {
    let mut status = None;
    let mut map = http::HeaderMap::new();
    for (name, value) in fields {
        if name == b":status" {
            status = Some(value);
        } else if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&name),
            http::HeaderValue::from_bytes(&value),
        ) {
            map.append(name, value);
        }
    }
    (status, map)
}

/// The status of a stream the server reset with HTTP/2 error `code` (as gRPC maps them).
fn reset(what: &str, code: u32) -> Status {
    let message = format!("{what}: the server reset the stream (HTTP/2 error {code})");
    match code {
        // REFUSED_STREAM
        0x7 => Status::unavailable(message),
        // CANCEL
        0x8 => Status::cancelled(message),
        // ENHANCE_YOUR_CALM
        0xb => Status::resource_exhausted(message),
        // INADEQUATE_SECURITY
        0xc => Status::permission_denied(message),
        _ => Status::internal(message),
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use arrow_array::{Array, RecordBatch};
    use arrow_flight::flight_service_client::FlightServiceClient;
    use arrow_flight::FlightDescriptor;
    use arrowbridge::landing::Destination;
    use arrowbridge::ArrowTensor;
    use tokio::io::ReadBuf;

    use super::*;
    use crate::{start, Client, ClientOptions, ItemForm, ServerConfig};

    /// A socket that notes where each read put its bytes.
    struct Recording<S> {
        inner: S,
        reads: Vec<(usize, usize)>,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Recording<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            let address = buf.initialize_unfilled().as_ptr() as usize;
            let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
            let n = buf.filled().len() - before;
            if n > 0 {
                self.reads.push((address, n));
            }
            polled
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for Recording<S> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// The item `name` of the server at `location`, fetched through [`do_get_into`] over a
    /// recorded socket of `address`: the batch, and the socket's reads.
    fn fetch(
        location: &str,
        address: crate::coalesce::Address,
        name: &str,
    ) -> (Result<RecordBatch, Status>, Vec<(usize, usize)>) {
        runtime().block_on(async {
            let uri: http::Uri = match &address {
                crate::coalesce::Address::Tcp => location.replace("grpc://", "http://"),
                crate::coalesce::Address::Unix(_) => "http://localhost".into(),
            }
            .parse()
            .unwrap();
            let connector = crate::coalesce::Connector {
                address: address.clone(),
                tls: false,
            };
            let channel = tonic::transport::Endpoint::from(uri.clone())
                .connect_with_connector(connector)
                .await
                .unwrap();
            let mut service = FlightServiceClient::new(channel);
            let descriptor = FlightDescriptor::new_path(vec![name.to_string()]);
            let info = service.get_flight_info(descriptor).await;
            let info = info.unwrap().into_inner();
            let schema = Arc::new(info.clone().try_decode_schema().unwrap());
            let rows = info.total_records as usize;
            let mut destination = Destination::new("get", schema.clone(), rows)
                .unwrap()
                .unwrap();
            let mut parts = destination.parts(&[rows]).unwrap();
            let mut socket = Recording {
                inner: address.connect(&uri).await.unwrap(),
                reads: Vec::new(),
            };
            let authority = uri.authority().unwrap().to_string();
            let got = do_get_into(
                &mut socket,
                &authority,
                None,
                name.as_bytes(),
                "DoGet",
                &schema,
                &mut parts[0],
            )
            .await;
            let part = parts.pop().unwrap();
            drop(parts);
            let batch = got
                .and_then(|()| part.finish().map_err(crate::receive::refused))
                .and_then(|()| destination.into_batch().map_err(crate::receive::refused));
            (batch, socket.reads)
        })
    }

    #[test]
    fn a_get_is_read_from_the_socket_straight_into_its_rows() {
        let dir =
            std::env::temp_dir().join(format!("arrowbridge-socket-get-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tcp = start(ServerConfig::new("127.0.0.1", 0)).unwrap();
        let unix_path = dir.join("flight.sock");
        let unix = start(ServerConfig::unix(&unix_path)).unwrap();
        let (rows, cols) = (2048, 1024); // 16 MiB: two messages of 8 MiB
        let x = ArrowTensor::from_array(ndarray::ArrayD::from_shape_fn(
            ndarray::IxDyn(&[rows, cols]),
            |i| (i[0] * cols + i[1]) as f64,
        ));
        for (server, address) in [
            (&tcp, crate::coalesce::Address::Tcp),
            (&unix, crate::coalesce::Address::Unix(unix_path.clone())),
        ] {
            let options = ClientOptions {
                shm: Some(false),
                ..ClientOptions::default()
            };
            let client = Client::connect(server.location(), options).unwrap();
            client.put("x", &[("data", &x)], ItemForm::Array).unwrap();
            let (batch, reads) = fetch(server.location(), address, "x");
            let batch = batch.unwrap();
            let column = batch.column(0).to_data();
            let values = &column.child_data()[0].buffers()[0];
            let got = arrowbridge::ipc::tensors_of(&batch.schema(), std::slice::from_ref(&batch))
                .unwrap();
            assert_eq!(got[0].1.view::<f64>().unwrap(), x.view::<f64>().unwrap());
            // Pointer comparison: the reads whose buffers lie in the column's values.
            let (start, end) = (
                values.as_ptr() as usize,
                values.as_ptr() as usize + values.len(),
            );
            let in_place: usize = reads
                .iter()
                .filter(|(a, n)| *a >= start && a + n <= end)
                .map(|(_, n)| n)
                .sum();
            assert!(
                in_place >= x.nbytes() * 99 / 100,
                "{}: {in_place} of {} bytes were read into their rows",
                server.location(),
                x.nbytes()
            );
        }
        drop(unix);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_servers_status_is_the_calls() {
        let server = start(ServerConfig::new("127.0.0.1", 0)).unwrap();
        let client = Client::connect(server.location(), ClientOptions::default()).unwrap();
        let x = ArrowTensor::from_array(ndarray::ArrayD::<f64>::zeros(ndarray::IxDyn(&[4, 2])));
        client.put("x", &[("data", &x)], ItemForm::Array).unwrap();
        // The schema of "x", and a ticket that names nothing.
        let runtime = runtime();
        let schema = runtime.block_on(async {
            let uri = server.location().replace("grpc://", "http://");
            let channel = tonic::transport::Endpoint::from_shared(uri).unwrap();
            let mut service = FlightServiceClient::new(channel.connect().await.unwrap());
            let descriptor = FlightDescriptor::new_path(vec!["x".to_string()]);
            let info = service.get_flight_info(descriptor).await.unwrap();
            info.into_inner().try_decode_schema().unwrap()
        });
        let mut destination = Destination::new("get", Arc::new(schema.clone()), 4)
            .unwrap()
            .unwrap();
        let mut parts = destination.parts(&[4]).unwrap();
        let uri: http::Uri = server
            .location()
            .replace("grpc://", "http://")
            .parse()
            .unwrap();
        let err = runtime
            .block_on(async {
                let socket = crate::coalesce::Address::Tcp.connect(&uri).await.unwrap();
                let authority = uri.authority().unwrap().as_str();
                let ticket = b"missing";
                do_get_into(
                    socket,
                    authority,
                    None,
                    ticket,
                    "DoGet",
                    &schema,
                    &mut parts[0],
                )
                .await
            })
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err}");
        assert!(err.message().contains("\"missing\""), "{err}");
    }

    /// A get of `rows` rows of a float64 column `x` over `io`.
    async fn get_x(io: tokio::io::DuplexStream, rows: usize) -> Result<(), Status> {
        let schema = Schema::new(vec![arrow_schema::Field::new(
            "x",
            arrow_schema::DataType::Float64,
            false,
        )]);
        let destination = Destination::new("get", Arc::new(schema.clone()), rows);
        let mut destination = destination.unwrap().unwrap();
        let mut parts = destination.parts(&[rows]).unwrap();
        do_get_into(io, "localhost", None, b"x", "DoGet", &schema, &mut parts[0]).await
    }

    /// The status of a get answered with `answer` (frames, then the end of the connection
    /// when `close`), by a server that is a test's bytes.
    fn answered(answer: Vec<u8>, close: bool) -> Status {
        runtime().block_on(async {
            let (client, mut server) = tokio::io::duplex(1 << 20);
            server.write_all(&answer).await.unwrap();
            if close {
                server.shutdown().await.unwrap();
            }
            let got = tokio::time::timeout(std::time::Duration::from_secs(10), get_x(client, 4))
                .await
                .expect("an answer, not a hang");
            drop(server);
            got.unwrap_err()
        })
    }

    fn headers(fields: &[(&str, &str)], flags: u8) -> Vec<u8> {
        let block = loona_hpack::Encoder::new()
            .encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        let mut out = Vec::new();
        frame(&mut out, HEADERS, END_HEADERS | flags, STREAM, &block);
        out
    }

    #[test]
    fn every_way_a_server_can_end_a_call_is_a_clear_status() {
        let ok = headers(
            &[(":status", "200"), ("content-type", "application/grpc")],
            0,
        );
        let reset = |code: u32| {
            let mut out = ok.clone();
            frame(&mut out, RST_STREAM, 0, STREAM, &code.to_be_bytes());
            out
        };
        let cases: Vec<(&str, Vec<u8>, bool, Code, &str)> = vec![
            (
                "reset",
                reset(8),
                false,
                Code::Cancelled,
                "reset the stream (HTTP/2 error 8)",
            ),
            (
                "refused",
                reset(7),
                false,
                Code::Unavailable,
                "HTTP/2 error 7",
            ),
            ("cut off", ok.clone(), true, Code::Unavailable, "broke off"),
            ("nothing", Vec::new(), true, Code::Unavailable, "broke off"),
            (
                "HTTP 503",
                headers(&[(":status", "503")], END_STREAM),
                false,
                Code::Unknown,
                "HTTP 503",
            ),
            (
                "trailers only",
                headers(
                    &[
                        (":status", "200"),
                        ("grpc-status", "5"),
                        ("grpc-message", "no%20such"),
                    ],
                    END_STREAM,
                ),
                false,
                Code::NotFound,
                "no such",
            ),
            (
                "no status",
                {
                    let mut out = ok.clone();
                    out.extend(headers(&[("x-other", "1")], END_STREAM));
                    out
                },
                false,
                Code::Unavailable,
                "without a status",
            ),
            (
                "data first",
                {
                    let mut out = Vec::new();
                    frame(&mut out, DATA, 0, STREAM, &[0, 0, 0, 0, 0]);
                    out
                },
                false,
                Code::Internal,
                "DATA frame before",
            ),
            (
                "go away",
                {
                    let mut out = Vec::new();
                    frame(&mut out, GOAWAY, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 2]);
                    out
                },
                false,
                Code::Unavailable,
                "closed the connection before the call (HTTP/2 error 2)",
            ),
            (
                "bad hpack",
                {
                    let mut out = Vec::new();
                    frame(
                        &mut out,
                        HEADERS,
                        END_HEADERS,
                        STREAM,
                        &[0xff, 0xff, 0xff, 0xff],
                    );
                    out
                },
                false,
                Code::Internal,
                "header block",
            ),
            (
                "bad framing",
                {
                    let mut out = ok.clone();
                    frame(&mut out, DATA, 0, STREAM, &[1, 0, 0, 0, 0]);
                    out.extend(headers(&[("grpc-status", "0")], END_STREAM));
                    out
                },
                false,
                Code::Internal,
                "compressed",
            ),
        ];
        for (name, answer, close, code, says) in cases {
            let status = answered(answer, close);
            assert_eq!(status.code(), code, "{name}: {status}");
            assert!(status.message().contains(says), "{name}: {status}");
        }
    }

    #[test]
    fn settings_and_pings_are_acknowledged() {
        runtime().block_on(async {
            let (client, mut server) = tokio::io::duplex(1 << 20);
            let mut answer = Vec::new();
            frame(&mut answer, SETTINGS, 0, 0, &[]);
            frame(&mut answer, PING, 0, 0, b"12345678");
            answer.extend(headers(
                &[(":status", "200"), ("grpc-status", "13")],
                END_STREAM,
            ));
            server.write_all(&answer).await.unwrap();
            let got = get_x(client, 1).await;
            assert_eq!(got.unwrap_err().code(), Code::Internal);
            let mut sent = Vec::new();
            server.read_to_end(&mut sent).await.unwrap();
            let mut acks = Vec::new();
            frame(&mut acks, SETTINGS, ACK, 0, &[]);
            frame(&mut acks, PING, ACK, 0, b"12345678");
            let request = request("localhost", None, &ticket_request(b"x", "t").unwrap());
            assert_eq!(&sent[..request.len()], &request[..]);
            assert_eq!(&sent[request.len()..request.len() + acks.len()], &acks[..]);
            assert_eq!(&sent[request.len() + acks.len()..], &goaway()[..]);
        });
    }
}
