//! DoGet straight into a destination: the request through tonic's channel (TLS, Unix
//! sockets, HTTP/2 connection sharing), the answer parsed as its frames arrive
//! ([`Parser`]) and each message's body copied from the frame it came in to the rows it
//! belongs to. tonic's decoder would gather every message into a buffer of its own first.

use arrow_flight::Ticket;
use arrow_schema::Schema;
use arrowbridge::landing::Sink;
use bytes::Bytes;
use prost::Message;
use tonic::Status;

use crate::client::{ClientError, ClientResult, Route};
use crate::wire::grpc;
use crate::wire::parse::Parser;

/// The gRPC method.
pub(crate) const DO_GET: &str = "/arrow.flight.protocol.FlightService/DoGet";

/// Fetches the DoGet stream of `ticket` over `route` into `part` (the rows of a
/// [`arrowbridge::landing::Destination`], or [`arrowbridge::landing::Bodies`]); the stream's schema must
/// have `expected`'s fields. The connection and the answer's headers come within the
/// route's patience ([`Route::answer`]).
pub(super) async fn do_get_into(
    route: &Route,
    ticket: &[u8],
    what: &str,
    expected: &Schema,
    part: &mut impl Sink,
) -> ClientResult<()> {
    let request = ticket_request(ticket, what)?;
    let body = tonic::body::Body::new(http_body_util::Full::new(Bytes::from(request)));
    let authorization = route.header_authorization();
    let response = (route.answer(async {
        let channel = route.channel().await?;
        grpc::call(channel, DO_GET, authorization.as_ref(), body, what).await
    }))
    .await?;
    let mut parser = Parser::new(what, expected, part);
    // What the parser refuses is the client's own error about what the server sent; the
    // status in the answer's trailers (or a broken connection) is the server's.
    let mut refused = None;
    let read = grpc::read_to_end(response, what, |data| {
        parser
            .feed(&data)
            .inspect_err(|status| refused = Some(status.clone()))
    })
    .await;
    if let Some(status) = refused {
        return Err(ClientError::received(what, &status));
    }
    read?;
    parser
        .finish()
        .map_err(|status| ClientError::received(what, &status))
}

/// The body of a DoGet request: one gRPC message holding a Ticket.
pub(crate) fn ticket_request(ticket: &[u8], what: &str) -> Result<Vec<u8>, Status> {
    let message = Ticket::new(ticket.to_vec()).encode_to_vec();
    let mut request = Vec::with_capacity(5 + message.len());
    grpc::prefix(&mut request, message.len(), what)?;
    request.extend_from_slice(&message);
    Ok(request)
}
