//! The server's calls as HTTP requests: DoGet is answered by hand, its messages views of the
//! stored buffers ([`crate::framing`]), so the server copies nothing but into the kernel;
//! every other call, and a DoGet of columns without such views, goes to tonic's
//! `FlightServiceServer`.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::Ticket;
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use prost::Message;
use tonic::server::NamedService;
use tonic::Status;

use crate::framing::Messages;
use crate::server::MAX_MESSAGE;
use crate::service::{Service, MAX_FLIGHT_DATA};

/// The gRPC method answered here.
const DO_GET: &str = "/arrow.flight.protocol.FlightService/DoGet";

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
        if request.uri().path() != DO_GET {
            return Box::pin(async move { flight.call(request).await });
        }
        let service = self.service.clone();
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
    let messages = crate::grpc::messages(message, what)
        .map_err(|status| Status::invalid_argument(status.message()))?;
    let [ticket] = messages[..] else {
        return Err(Status::invalid_argument(
            "DoGet: the request must be one Ticket message",
        ));
    };
    let ticket = Ticket::decode(ticket)
        .map_err(|e| Status::invalid_argument(format!("DoGet: a bad Ticket: {e}")))?;
    let (schema, batches) = service.get_batches(&ticket.ticket).await?;
    let Some(messages) = Messages::new(None, &schema, &batches, MAX_FLIGHT_DATA, what)? else {
        return Ok(None);
    };
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let response = http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(messages.into_body(Some(trailers)))
        .map_err(|e| Status::internal(format!("DoGet: {e}")))?;
    Ok(Some(response))
}
