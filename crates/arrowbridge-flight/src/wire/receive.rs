//! Receiving a stream of FlightData: the server's DoPut and DoExchange uploads, the client's
//! DoExchange results, and DoGet results that cannot land in place (see [`crate::wire::parse`]) go
//! through here.
//!
//! Every message is checked ([`arrowbridge::ipc::check_message`]) before anything reads it.
//! A stream whose schema announces its rows ([`arrowbridge::landing::ROWS_KEY`], as every
//! arrowbridge sender does) and whose columns are fixed-width lands in one buffer per column,
//! allocated once; other streams (pyarrow.flight writers, strings, nulls) are decoded by
//! arrow-ipc into the batches they were sent as.

use std::sync::{Arc, Mutex, PoisonError};

use arrow_array::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightData, FlightDescriptor};
use arrow_schema::{Schema, SchemaRef};
use arrowbridge::landing::{announced_rows, Landing, Part};
use futures::stream::{self, Stream, StreamExt, TryStreamExt};
use tonic::Status;

use crate::error::FlightServerError;

/// What a stream brought.
#[derive(Debug, Default)]
pub struct Received {
    /// The descriptor of its first message (uploads carry one).
    pub descriptor: Option<FlightDescriptor>,
    /// Its schema; `None` when no Arrow data came at all.
    pub schema: Option<SchemaRef>,
    /// Its rows: one batch of contiguous columns when they landed, the batches as sent
    /// otherwise.
    pub batches: Vec<RecordBatch>,
}

pub(crate) fn refused(e: arrowbridge::Error) -> Status {
    Status::from(FlightServerError::from(e))
}

/// The next message that carries Arrow data (a header); others (a descriptor of its own,
/// app_metadata only) are skipped. `descriptor` keeps the first descriptor seen.
pub(crate) async fn next_data<S>(
    stream: &mut S,
    descriptor: &mut Option<FlightDescriptor>,
) -> Result<Option<FlightData>, Status>
where
    S: Stream<Item = Result<FlightData, Status>> + Unpin,
{
    while let Some(data) = stream.next().await.transpose()? {
        if descriptor.is_none() {
            descriptor.clone_from(&data.flight_descriptor);
        }
        if !data.data_header.is_empty() {
            return Ok(Some(data));
        }
    }
    Ok(None)
}

/// The schema a schema message carries, checked (once for the same bytes:
/// [`crate::wire::schemas`]).
pub(crate) fn schema_message(what: &str, data: &FlightData) -> Result<SchemaRef, Status> {
    crate::wire::schemas::received(&data.data_header, || {
        arrowbridge::ipc::check_message(what, &data.data_header, &data.data_body, None)
            .map_err(refused)?;
        arrowbridge::ipc::schema_of_message(&data.data_header).ok_or_else(|| {
            Status::invalid_argument(format!(
                "{what}: the stream must begin with a schema message"
            ))
        })
    })
}

/// Checks a message that follows the schema: a record batch that fits it.
fn check_batch(what: &str, schema: &Schema, data: &FlightData) -> Result<(), Status> {
    arrowbridge::ipc::check_message(what, &data.data_header, &data.data_body, Some(schema))
        .map_err(refused)?;
    let message = arrow_ipc::root_as_message(&data.data_header)
        .map_err(|e| Status::invalid_argument(format!("{what}: corrupt message: {e}")))?;
    if message.header_type() != arrow_ipc::MessageHeader::RecordBatch {
        return Err(Status::invalid_argument(format!(
            "{what}: a {:?} message in a stream of tensors, where only record batches may follow the schema",
            message.header_type()
        )));
    }
    Ok(())
}

/// Fills `part` with the record batches that follow the schema message of `stream`.
async fn fill<S>(
    stream: &mut S,
    what: &str,
    schema: &Schema,
    part: &mut Part<'_>,
    descriptor: &mut Option<FlightDescriptor>,
) -> Result<(), Status>
where
    S: Stream<Item = Result<FlightData, Status>> + Unpin,
{
    while let Some(data) = next_data(stream, descriptor).await? {
        check_batch(what, schema, &data)?;
        part.fill(&data.data_header, &data.data_body)
            .map_err(refused)?;
    }
    Ok(())
}

/// Reads a whole stream (see the module's documentation).
pub async fn receive<S>(mut stream: S, what: &'static str) -> Result<Received, Status>
where
    S: Stream<Item = Result<FlightData, Status>> + Send + Unpin + 'static,
{
    let mut descriptor = None;
    let Some(first) = next_data(&mut stream, &mut descriptor).await? else {
        return Ok(Received {
            descriptor,
            ..Received::default()
        });
    };
    let schema = schema_message(what, &first)?;
    if let Some(rows) = announced_rows(&schema) {
        if let Some(mut landing) = Landing::new(what, schema.clone(), rows).map_err(refused)? {
            while let Some(data) = next_data(&mut stream, &mut descriptor).await? {
                check_batch(what, &schema, &data)?;
                landing
                    .fill(&data.data_header, &data.data_body)
                    .map_err(refused)?;
            }
            let batch = landing.into_batch().map_err(refused)?;
            return Ok(Received {
                descriptor,
                schema: Some(schema),
                batches: vec![batch],
            });
        }
    }
    let (schema, batches) = decode(stream::iter([Ok(first)]).chain(stream), what).await?;
    Ok(Received {
        descriptor,
        schema,
        batches,
    })
}

/// Reads the stream of one part of a destination (a parallel get of one endpoint): its
/// schema must have `expected`'s fields.
pub async fn receive_part<S>(
    mut stream: S,
    what: &str,
    expected: &Schema,
    part: &mut Part<'_>,
) -> Result<(), Status>
where
    S: Stream<Item = Result<FlightData, Status>> + Unpin,
{
    let mut descriptor = None;
    let first = next_data(&mut stream, &mut descriptor)
        .await?
        .ok_or_else(|| Status::invalid_argument(format!("{what}: an empty stream")))?;
    let schema = schema_message(what, &first)?;
    if schema.fields() != expected.fields() {
        return Err(Status::invalid_argument(format!(
            "{what}: the stream's columns differ from the item's"
        )));
    }
    fill(&mut stream, what, &schema, part, &mut descriptor).await?;
    Ok(())
}

/// Decodes the record batches of a stream with arrow-ipc, each message checked first.
async fn decode<S>(
    stream: S,
    what: &'static str,
) -> Result<(Option<SchemaRef>, Vec<RecordBatch>), Status>
where
    S: Stream<Item = Result<FlightData, Status>> + Send + Unpin + 'static,
{
    let mut decoded = Decoded::new(stream, what);
    let mut batches = Vec::new();
    while let Some(batch) = decoded.next().await {
        batches.push(batch?);
    }
    Ok((decoded.schema(), batches))
}

/// The record batches of a stream as arrow-ipc decodes them, one at a time, each message
/// checked first ([`arrowbridge::ipc::check_message`]).
pub struct Decoded {
    batches: FlightRecordBatchStream,
    /// The status of a message that failed its check; the decoder only sees an error.
    refusal: Arc<Mutex<Option<Status>>>,
    what: &'static str,
}

impl Decoded {
    /// Decodes `stream` (its first data message is the schema).
    pub fn new<S>(stream: S, what: &'static str) -> Self
    where
        S: Stream<Item = Result<FlightData, Status>> + Send + Unpin + 'static,
    {
        let refusal: Arc<Mutex<Option<Status>>> = Arc::default();
        let refusal_in = refusal.clone();
        // Batches are checked against the stream's schema, which its schema message brings.
        let mut schema: Option<Schema> = None;
        let checked = stream
            .map_err(|status| FlightError::Tonic(Box::new(status)))
            .try_filter(|data| futures::future::ready(!data.data_header.is_empty()))
            .and_then(move |data| {
                let result = arrowbridge::ipc::check_message(
                    what,
                    &data.data_header,
                    &data.data_body,
                    schema.as_ref(),
                )
                .map(|()| {
                    if let Some(sent) = arrowbridge::ipc::schema_of_message(&data.data_header) {
                        schema = Some(sent);
                    }
                    data
                })
                .map_err(|e| {
                    let status = refused(e);
                    let error = FlightError::ProtocolError(status.message().to_string());
                    *refusal_in.lock().unwrap_or_else(PoisonError::into_inner) = Some(status);
                    error
                });
                futures::future::ready(result)
            });
        Decoded {
            batches: FlightRecordBatchStream::new_from_flight_data(checked),
            refusal,
            what,
        }
    }

    /// The next batch; `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Result<RecordBatch, Status>> {
        Some(match self.batches.next().await? {
            Ok(batch) => Ok(batch),
            Err(FlightError::Tonic(status)) => Err(*status),
            Err(e) => {
                let refused = self
                    .refusal
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                Err(refused.unwrap_or_else(|| {
                    Status::invalid_argument(format!("{}: bad Arrow data: {e}", self.what))
                }))
            }
        })
    }

    /// The stream's schema, once its schema message was read.
    pub fn schema(&self) -> Option<SchemaRef> {
        self.batches.schema().cloned()
    }
}
