//! The server's calls as HTTP requests. Two are handled by hand:
//!
//! - DoGet: the answer's messages are views of the stored buffers ([`crate::wire::framing`]), so
//!   the server copies nothing but into the kernel;
//! - DoPut of a stream that announces its rows (as arrowbridge clients send): each message's
//!   body lands in the item's buffers as the HTTP/2 frames bring it ([`Parser`] into a
//!   [`Landing`]), instead of being gathered into a buffer of tonic's first; batches of
//!   columns that cannot land in one buffer per column (ragged data) land in an aligned
//!   buffer per message ([`Bodies`]), which arrow-ipc then reads in place.
//!
//! Every other call, and streams these cannot take (columns without views, no announced
//! rows, anything unusual in the first message), go to tonic's `FlightServiceServer` as they
//! came: a DoPut's bytes read so far are replayed ahead of the rest.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::{FlightData, FlightDescriptor, Ticket};
use arrow_schema::{Schema, SchemaRef};
use arrowbridge::landing::{
    announced_rows, announces_a_stream, announces_more_rows, Bodies, Incoming, Landing, Sink,
};
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tonic::server::NamedService;
use tonic::Status;

use crate::server::service::Service;
use crate::wire::framing::Messages;
use crate::wire::parse::Parser;
use crate::wire::receive::{refused, schema_message, Received};
use crate::wire::{MAX_FLIGHT_DATA, MAX_MESSAGE};

/// The gRPC methods handled here.
const DO_GET: &str = "/arrow.flight.protocol.FlightService/DoGet";
const DO_PUT: &str = "/arrow.flight.protocol.FlightService/DoPut";

type Request = http::Request<tonic::body::Body>;
type Response = http::Response<tonic::body::Body>;

/// The server's routes (see the module's documentation).
#[derive(Clone)]
pub(crate) struct Routes {
    service: Arc<Service>,
    flight: FlightServiceServer<Service>,
}

impl Routes {
    pub(crate) fn new(service: Service) -> Self {
        let service = Arc::new(service);
        let flight = FlightServiceServer::from_arc(service.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Routes { service, flight }
    }
}

impl NamedService for Routes {
    const NAME: &'static str = <FlightServiceServer<Service> as NamedService>::NAME;
}

impl tower_service::Service<Request> for Routes {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let mut flight = self.flight.clone();
        let service = self.service.clone();
        match request.uri().path() {
            DO_GET => {}
            DO_PUT => return Box::pin(do_put(service, flight, request)),
            _ => return Box::pin(async move { flight.call(request).await }),
        }
        Box::pin(async move {
            let (head, body) = request.into_parts();
            let message = match read_request(body).await {
                Ok(message) => message,
                Err(status) => return Ok(status.into_http()),
            };
            match do_get(&service, &head.headers, &message).await {
                Ok(Some(response)) => Ok(response),
                Ok(None) => {
                    // Columns without views: tonic encodes them, from the same request.
                    let body = tonic::body::Body::new(http_body_util::Full::new(message));
                    flight.call(http::Request::from_parts(head, body)).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// The whole body of a request of one message (a ticket: small), at most [`MAX_MESSAGE`].
async fn read_request(mut body: tonic::body::Body) -> Result<Bytes, Status> {
    let mut bytes = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if bytes.len() + data.len() > MAX_MESSAGE + 5 {
                return Err(Status::out_of_range(format!(
                    "DoGet: a request of more than {MAX_MESSAGE} bytes"
                )));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes.freeze())
}

/// The answer to a DoGet of the request body `message`; `None` for columns without views.
async fn do_get(
    service: &Service,
    headers: &http::HeaderMap,
    message: &[u8],
) -> Result<Option<Response>, Status> {
    service.check_token(
        headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )?;
    let what = "DoGet";
    let messages = crate::wire::grpc::messages(message, what)
        .map_err(|status| Status::invalid_argument(status.message()))?;
    let [ticket] = messages[..] else {
        return Err(Status::invalid_argument(
            "DoGet: the request must be one Ticket message",
        ));
    };
    let ticket = Ticket::decode(ticket)
        .map_err(|e| Status::invalid_argument(format!("DoGet: a bad Ticket: {e}")))?;
    let (schema, batches, held) = service.get_batches(&ticket.ticket).await?;
    let Some(messages) = Messages::new(None, &schema, &batches, MAX_FLIGHT_DATA, what)? else {
        return Ok(None);
    };
    let version = http::HeaderValue::from(held.version);
    // The answer holds the version it sends until its last byte is out.
    let mut response = answer(messages.into_body(Some(ok_trailers()), held));
    response
        .headers_mut()
        .insert(crate::error::VERSION_KEY, version);
    Ok(Some(response))
}

/// The trailers of a call that succeeded.
fn ok_trailers() -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    trailers
}

/// A gRPC answer of `body`.
fn answer(body: tonic::body::Body) -> Response {
    let mut response = http::Response::new(body);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// A DoPut (see the module's documentation).
async fn do_put(
    service: Arc<Service>,
    mut flight: FlightServiceServer<Service>,
    request: Request,
) -> Result<Response, Infallible> {
    let (head, mut body) = request.into_parts();
    let authorization = head.headers.get(http::header::AUTHORIZATION);
    if let Err(status) = service.check_token(authorization.and_then(|v| v.to_str().ok())) {
        return Ok(status.into_http());
    }
    // The first message, whole: the schema (and the descriptor) it carries decide the way.
    let mut read = BytesMut::new();
    let mut ended = false;
    let first = loop {
        if let Some(len) = first_message_len(&read) {
            if read.len() >= 5 + len {
                break Some(len);
            }
        } else if read.len() >= 5 {
            break None; // compressed, or over the limit: tonic says so
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    read.extend_from_slice(&data);
                }
            }
            Some(Err(status)) => return Ok(status.into_http()),
            None => {
                ended = true;
                break None;
            }
        }
    };
    let read = read.freeze();
    // With a data directory, puts are written to their files as they arrive (tonic's way,
    // `Service::put_messages`), not landed in memory.
    let start = first
        .filter(|_| !service.stores_files())
        .and_then(|len| Some((len, landing_of(&read[5..5 + len])?)));
    let Some((first, (descriptor, schema, mut landing))) = start else {
        // Replayed to tonic: what was read, then the rest of the stream.
        let rest = if ended { None } else { Some(body) };
        let replayed = tonic::body::Body::new(Replayed {
            read: Some(read),
            rest,
        });
        return tower_service::Service::call(
            &mut flight,
            http::Request::from_parts(head, replayed),
        )
        .await;
    };
    let what = "DoPut";
    // Refused before its buffers are allocated when it cannot fit the budget.
    if let Some(name) = descriptor.path.first() {
        if let Err(status) = service.admits(name, landing.bytes()) {
            return Ok(status.into_http());
        }
    }
    if let (Arrival::Rows(rows), Some(name)) = (&mut landing, descriptor.path.first()) {
        set_aside_for_replaced(&service, name, &schema, rows);
    }
    let admitted = landing.bytes();
    let name = descriptor.path.first().cloned();
    let landed = async {
        let mut parser = Parser::after_schema(what, &schema, &mut landing);
        parser.feed(&read[5 + first..])?;
        // Rows beyond those set aside (a streamed put's) are charged as they come, every
        // 8 MiB: past the budget the put is refused before it is all in memory.
        let (mut fed, mut checked) = (read.len() - (5 + first), admitted);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                fed = fed.saturating_add(data.len());
                if let Some(name) = name.as_ref().filter(|_| fed > checked) {
                    service.admits(name, fed)?;
                    checked = fed.saturating_add(8 << 20);
                }
                parser.feed(&data)?;
            }
        }
        parser.finish()?;
        landing.into_batches().map_err(refused)
    };
    let result = match landed.await {
        Ok(batches) => {
            let received = Received {
                descriptor: Some(descriptor),
                schema: Some(schema),
                batches,
            };
            service.store_received(received).await
        }
        Err(status) => Err(status),
    };
    Ok(match result {
        Ok(ack) => {
            let message = ack.encode_to_vec();
            let mut framed = Vec::with_capacity(5 + message.len());
            crate::wire::grpc::prefix(&mut framed, message.len(), what).expect("a small message");
            framed.extend_from_slice(&message);
            let frames = [
                Frame::data(Bytes::from(framed)),
                Frame::trailers(ok_trailers()),
            ];
            let body = http_body_util::StreamBody::new(futures::stream::iter(
                frames.map(Ok::<_, Infallible>),
            ));
            answer(tonic::body::Body::new(body))
        }
        Err(status) => status.into_http(),
    })
}

/// A streamed put of tensors ([`announces_more_rows`]) that replaces an item of the same
/// columns is likely as long as that item: its rows are set aside at once, one allocation
/// (which the allocator may serve from pages a replaced version freed), where the buffers
/// would otherwise grow from the first batch's rows. Only when the budget admits them; a
/// shorter stream gives back what it did not use ([`Landing::into_batch`]).
fn set_aside_for_replaced(service: &Service, name: &str, schema: &Schema, landing: &mut Landing) {
    if !announces_more_rows(schema) {
        return;
    }
    let Some(item) = service.item(name) else {
        return;
    };
    if item.shards.is_some() || item.schema.fields() != schema.fields() {
        return;
    }
    let Ok(bytes) = landing.bytes_for(item.rows()) else {
        return;
    };
    if bytes > landing.bytes() && service.admits(name, bytes).is_ok() {
        // Room it cannot get is only a hint not taken: the buffers grow as rows come.
        let _ = landing.set_aside(item.rows());
    }
}

/// The length of the gRPC message whose prefix begins `read`, when it is one this server
/// takes (not compressed, within [`MAX_MESSAGE`]); `None` until the prefix is whole.
fn first_message_len(read: &[u8]) -> Option<usize> {
    let prefix = read.get(..5)?;
    let len = u32::from_be_bytes(prefix[1..5].try_into().expect("4 bytes")) as usize;
    (prefix[0] == 0 && len <= MAX_MESSAGE).then_some(len)
}

/// The descriptor and schema of a DoPut whose first message is `message`, and where its
/// batches land, when it announces its rows; `None` otherwise.
fn landing_of(message: &[u8]) -> Option<(FlightDescriptor, SchemaRef, Arrival)> {
    let data = FlightData::decode(message).ok()?;
    // A put without a name goes tonic's way, which refuses it at its first message (it
    // could not be charged to the budget as it arrives).
    let descriptor = data
        .flight_descriptor
        .clone()
        .filter(|d| !d.path.is_empty())?;
    if data.data_header.is_empty() {
        return None;
    }
    let schema = schema_message("DoPut", &data).ok()?;
    let shared = schema.clone();
    let arrival = match announced_rows(&schema) {
        Some(rows) => match Landing::new("DoPut", shared.clone(), rows).ok()? {
            Some(landing) => Arrival::Rows(landing),
            None => Arrival::Batches(Bodies::new("DoPut", shared)),
        },
        // A streamed put of ragged data, whose rows are not known yet: each message lands
        // as it arrives, in blocks that grow, never copied to a larger buffer.
        None if announces_a_stream(&schema) => Arrival::Batches(Bodies::new("DoPut", shared)),
        None => return None,
    };
    Some((descriptor, schema, arrival))
}

/// Where a DoPut's batches land: one buffer per column for fixed-width rows, one per
/// message for any other columns.
enum Arrival {
    Rows(Landing),
    Batches(Bodies),
}

impl Arrival {
    /// The bytes set aside or received so far.
    fn bytes(&self) -> usize {
        match self {
            Arrival::Rows(landing) => landing.bytes(),
            Arrival::Batches(bodies) => bodies.bytes(),
        }
    }

    fn into_batches(self) -> arrowbridge::Result<Vec<arrow_array::RecordBatch>> {
        match self {
            Arrival::Rows(landing) => Ok(vec![landing.into_batch()?]),
            Arrival::Batches(bodies) => bodies.into_batches(),
        }
    }
}

impl Sink for Arrival {
    fn begin(&mut self, metadata: &[u8], body_len: usize) -> arrowbridge::Result<Option<Incoming>> {
        match self {
            Arrival::Rows(landing) => landing.begin(metadata, body_len),
            Arrival::Batches(bodies) => bodies.begin(metadata, body_len),
        }
    }

    fn write(&mut self, incoming: &Incoming, at: usize, bytes: &[u8]) {
        match self {
            Arrival::Rows(landing) => landing.write(incoming, at, bytes),
            Arrival::Batches(bodies) => bodies.write(incoming, at, bytes),
        }
    }

    fn commit(&mut self, incoming: Incoming) {
        match self {
            Arrival::Rows(landing) => landing.commit(incoming),
            Arrival::Batches(bodies) => bodies.commit(incoming),
        }
    }

    fn values_at(&mut self, incoming: &Incoming, at: usize, len: usize) -> Option<&mut [u8]> {
        match self {
            Arrival::Rows(landing) => landing.values_at(incoming, at, len),
            Arrival::Batches(bodies) => bodies.values_at(incoming, at, len),
        }
    }
}

/// A request body whose first bytes were read already: those, then the rest.
struct Replayed {
    read: Option<Bytes>,
    rest: Option<tonic::body::Body>,
}

impl http_body::Body for Replayed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(read) = self.read.take() {
            return Poll::Ready(Some(Ok(Frame::data(read))));
        }
        match &mut self.rest {
            Some(rest) => std::pin::Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_flight::SchemaAsIpc;
    use arrow_ipc::writer::IpcWriteOptions;
    use arrow_schema::{DataType, Field};

    fn first_message(schema: &Schema, descriptor: Option<FlightDescriptor>) -> Vec<u8> {
        let mut data = FlightData::from(SchemaAsIpc::new(schema, &IpcWriteOptions::default()));
        data.flight_descriptor = descriptor;
        data.encode_to_vec()
    }

    #[test]
    fn puts_that_announce_their_rows_land_as_they_arrive() {
        let name = FlightDescriptor::new_path(vec!["x".into()]);
        let path = Some(name.clone());
        let plain = Schema::new(vec![Field::new("x", DataType::Float64, false)]);
        let announced = arrowbridge::landing::announcing(&plain, 10);
        let (descriptor, schema, arrival) =
            landing_of(&first_message(&announced, path.clone())).expect("lands in place");
        assert_eq!((descriptor, (*schema).clone()), (name.clone(), announced));
        assert!(
            matches!(arrival, Arrival::Rows(_)),
            "fixed-width rows: one buffer a column"
        );
        // Columns of rows of different sizes land a message at a time.
        let strings = Schema::new(vec![Field::new("s", DataType::Utf8, false)]);
        let (_, _, arrival) = landing_of(&first_message(
            &arrowbridge::landing::announcing(&strings, 10),
            path.clone(),
        ))
        .expect("lands a message at a time");
        assert!(matches!(arrival, Arrival::Batches(_)));
        // So do streamed puts, whose rows are not known when they begin.
        let (_, _, arrival) = landing_of(&first_message(
            &arrowbridge::landing::announcing_a_stream(&plain),
            path.clone(),
        ))
        .expect("lands a message at a time");
        assert!(matches!(arrival, Arrival::Batches(_)));
        // Everything else is tonic's: no announced rows (pyarrow's writers), no descriptor,
        // not a schema.
        for message in [
            first_message(&plain, path.clone()),
            first_message(&arrowbridge::landing::announcing(&plain, 10), None),
            FlightData::new().with_descriptor(name).encode_to_vec(),
            vec![0xff; 7],
        ] {
            assert!(landing_of(&message).is_none());
        }
    }

    #[test]
    fn a_first_message_is_taken_once_its_prefix_is_whole_and_acceptable() {
        assert_eq!(first_message_len(&[0, 0, 0]), None);
        assert_eq!(first_message_len(&[0, 0, 0, 1, 0]), Some(256));
        assert_eq!(first_message_len(&[1, 0, 0, 1, 0]), None, "compressed");
        let over = ((MAX_MESSAGE + 1) as u32).to_be_bytes();
        assert_eq!(
            first_message_len(&[0, over[0], over[1], over[2], over[3]]),
            None
        );
    }
}
