//! Flight on the wire, both directions, for client and server alike: FlightData messages
//! framed as views of the arrays ([`framing`]), gRPC calls made by hand over tonic's channel
//! ([`grpc`]), streams parsed as their frames arrive ([`parse`]) or whole ([`receive`]), the
//! schema messages last sent and received ([`schemas`]), and the sockets under HTTP/2
//! ([`transport`]). The size limits of messages live here.

pub(crate) mod framing;
pub(crate) mod grpc;
pub(crate) mod parse;
pub(crate) mod protocol;
pub(crate) mod receive;
pub(crate) mod schemas;
pub(crate) mod transport;

/// Largest message the server accepts from a client (larger puts must be split by rows;
/// clients built on arrowbridge and pyarrow.flight writers with `max_chunksize` do so).
pub const MAX_MESSAGE: usize = 64 << 20;

/// Largest FlightData message sent, by either end; bigger batches are cut by bytes.
pub const MAX_FLIGHT_DATA: usize = 8 << 20;
