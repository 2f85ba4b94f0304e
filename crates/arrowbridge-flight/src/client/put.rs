//! DoPut straight from the arrays: the request body is [`Messages`], views of the columns'
//! buffers (see [`crate::wire::framing`]); the answer is read by hand too.

use arrow_flight::PutResult;
use prost::Message;
use tonic::transport::Channel;
use tonic::Status;

use crate::wire::framing::Messages;
use crate::wire::grpc;

/// The gRPC method.
const DO_PUT: &str = "/arrow.flight.protocol.FlightService/DoPut";

/// Sends `messages` as a DoPut over `channel`; the server's acknowledgements.
pub(crate) async fn do_put(
    channel: Channel,
    authorization: Option<&http::HeaderValue>,
    messages: Messages,
    what: &str,
) -> Result<Vec<PutResult>, Status> {
    let body = messages.into_body(None, ());
    let response = grpc::call(channel, DO_PUT, authorization, body, what).await?;
    let mut answer = Vec::new();
    grpc::read_to_end(response, what, |data| {
        answer.extend_from_slice(&data);
        Ok(())
    })
    .await?;
    grpc::messages(&answer, what)?
        .into_iter()
        .map(|m| {
            PutResult::decode(m)
                .map_err(|e| Status::internal(format!("{what}: a bad PutResult: {e}")))
        })
        .collect()
}
