//! gRPC calls made by hand over tonic's channel, for the RPCs whose bodies we frame or parse
//! ourselves ([`crate::wire::parse`], [`crate::client::put`]): the channel still brings TLS,
//! Unix sockets, HTTP/2 connection sharing and timeouts, and errors are the server's status.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use tonic::client::GrpcService;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// A gRPC response whose headers said the call is under way (or is over).
pub(crate) struct Response {
    body: <Channel as GrpcService<tonic::body::Body>>::ResponseBody,
    /// The status of a "trailers-only" response, whose headers carry it (a call that ended
    /// without a message).
    status: Option<Status>,
}

/// Starts the call of `method` (`/package.Service/Method`) with the request body `body`;
/// the response once its headers came, or the status of a call that failed at once.
/// `authorization` is the request's header of that name.
pub(crate) async fn call(
    mut channel: Channel,
    method: &'static str,
    authorization: Option<&http::HeaderValue>,
    body: tonic::body::Body,
    what: &str,
) -> Result<Response, Status> {
    let mut request = http::Request::builder()
        .method(http::Method::POST)
        .uri(method)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers");
    if let Some(value) = authorization {
        request = request.header(http::header::AUTHORIZATION, value.clone());
    }
    let request = request
        .body(body)
        .map_err(|e| Status::internal(format!("{what}: {e}")))?;
    futures::future::poll_fn(|cx| GrpcService::poll_ready(&mut channel, cx))
        .await
        .map_err(transport)?;
    let response = GrpcService::call(&mut channel, request)
        .await
        .map_err(transport)?;
    let (head, body) = response.into_parts();
    if head.status != http::StatusCode::OK {
        return Err(Status::unknown(format!(
            "{what}: the server answered HTTP {}",
            head.status
        )));
    }
    // A call that fails at once, or ends without a message, answers with its status in the
    // headers ("trailers only").
    let status = Status::from_header_map(&head.headers);
    match status {
        Some(status) if status.code() != Code::Ok => Err(status),
        status => Ok(Response { body, status }),
    }
}

/// How long [`read_to_end`] lands frames that are ready before it lets the rest of its task
/// (a call's deadline, its interruption check) run.
const YIELD_EVERY: Duration = Duration::from_millis(2);

/// Reads a response body to its end: each data frame goes to `data`; the call's status.
pub(crate) async fn read_to_end(
    response: Response,
    what: &str,
    mut data: impl FnMut(Bytes) -> Result<(), Status>,
) -> Result<(), Status> {
    let Response {
        mut body,
        mut status,
    } = response;
    let mut since_yield = Instant::now();
    while let Some(frame) = body.frame().await {
        // h2's frames come without tokio's cooperative budget: a stream that is always ready
        // would keep this task from yielding, and a deadline or Ctrl+C from being seen, for as
        // long as the bytes flow. The budget's 128 frames are not enough of a bound: with
        // 1 MiB frames landing in pages touched for the first time, they took up to 100 ms
        // (a call interrupted mid-get gave up that late), so the task also yields by time.
        tokio::task::consume_budget().await;
        if since_yield.elapsed() >= YIELD_EVERY {
            tokio::task::yield_now().await;
            since_yield = Instant::now();
        }
        match frame?.into_data() {
            Ok(bytes) => data(bytes)?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    status = Status::from_header_map(&trailers);
                }
            }
        }
    }
    match status {
        Some(status) if status.code() == Code::Ok => Ok(()),
        Some(status) => Err(status),
        None => Err(Status::unavailable(format!(
            "{what}: the stream ended without a status (the connection broke off)"
        ))),
    }
}

/// The 5-byte prefix of a gRPC message of `len` bytes (not compressed).
pub(crate) fn prefix(out: &mut Vec<u8>, len: usize, what: &str) -> Result<(), Status> {
    let len = u32::try_from(len)
        .map_err(|_| Status::internal(format!("{what}: a message of {len} bytes")))?;
    out.push(0);
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

/// The messages of a whole gRPC body (the prefix of each removed).
pub(crate) fn messages<'b>(mut body: &'b [u8], what: &str) -> Result<Vec<&'b [u8]>, Status> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let bad = |m: &str| Status::internal(format!("{what}: {m}"));
        if body.len() < 5 {
            return Err(bad("the body ended inside a message's prefix"));
        }
        if body[0] != 0 {
            return Err(bad("a compressed gRPC message, which was not asked for"));
        }
        let len = u32::from_be_bytes(body[1..5].try_into().expect("4 bytes")) as usize;
        let message = body
            .get(5..5 + len)
            .ok_or_else(|| bad("the body ended inside a message"))?;
        out.push(message);
        body = &body[5 + len..];
    }
    Ok(out)
}

pub(crate) fn transport(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Status {
    let e = e.into();
    match e.downcast::<Status>() {
        Ok(status) => *status,
        Err(e) => Status::unavailable(crate::error::chain("", &*e)),
    }
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_split_at_their_prefixes() {
        let mut body = Vec::new();
        for message in [&b"ab"[..], b"", b"xyz"] {
            prefix(&mut body, message.len(), "test").unwrap();
            body.extend_from_slice(message);
        }
        let got = messages(&body, "test").unwrap();
        assert_eq!(got, [&b"ab"[..], b"", b"xyz"]);
        let err = |bytes: &[u8]| messages(bytes, "test").unwrap_err().message().to_string();
        assert!(err(&body[..body.len() - 1]).contains("ended inside a message"));
        assert!(err(&body[..3]).contains("inside a message's prefix"));
        assert!(err(&[1, 0, 0, 0, 0]).contains("compressed"));
    }
}
