//! DoPut straight from the arrays: the request body is [`Messages`], views of the columns'
//! buffers (see [`crate::wire::framing`]); the answer is read by hand too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_flight::{FlightData, FlightDescriptor, PutResult};
use arrow_schema::{Schema, SchemaRef};
use arrowbridge::ipc::Column;
use arrowbridge::{ArrowTensor, RaggedMetadata};
use bytes::Bytes;
use prost::Message;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Status;

use super::{Client, ClientError, ClientResult, ItemForm, ITEM_KEY};
use crate::wire::{MAX_FLIGHT_DATA, MAX_MESSAGE};

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
    do_put_body(channel, authorization, messages.into_body(None, ()), what).await
}

/// Sends `body` (gRPC-framed FlightData messages) as a DoPut over `channel`; the server's
/// acknowledgements.
async fn do_put_body(
    channel: Channel,
    authorization: Option<&http::HeaderValue>,
    body: tonic::body::Body,
    what: &str,
) -> Result<Vec<PutResult>, Status> {
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

/// A put whose rows arrive in batches ([`Client::put_stream`]): one DoPut under way, fed
/// batch by batch with backpressure; the item becomes visible, as one version, when
/// [`Client::finish_put`] ends the stream. Dropping it unfinished resets the DoPut: the
/// server stores nothing.
pub struct PutStream {
    what: String,
    name: String,
    form: ItemForm,
    /// The schema of the first batch (every batch must have it), once one was sent.
    schema: Option<SchemaRef>,
    sender: Option<tokio::sync::mpsc::Sender<Bytes>>,
    /// Set before the sender is dropped to abort: the request body then fails instead of
    /// ending, and the stream is reset.
    aborted: Arc<AtomicBool>,
    task: Option<JoinHandle<ClientResult<usize>>>,
    batches: usize,
    rows: usize,
    /// Whether the stream was ended (the server may then store the item).
    ended: bool,
}

impl Drop for PutStream {
    fn drop(&mut self) {
        self.abort();
    }
}

impl std::fmt::Debug for PutStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutStream")
            .field("what", &self.what)
            .field("batches", &self.batches)
            .field("rows", &self.rows)
            .finish()
    }
}

impl PutStream {
    /// Batches sent so far.
    pub fn batches(&self) -> usize {
        self.batches
    }

    /// Rows sent so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Resets the DoPut (the server stores nothing); idempotent.
    fn abort(&mut self) {
        if self.sender.is_some() {
            self.aborted.store(true, Ordering::Release);
            self.sender = None;
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The request body of a streamed put: the gRPC-framed bytes the sender queues (mostly
/// views of the batches' arrays, [`Messages`]); it ends when the sender is dropped, or fails
/// (so that the stream is reset and the server stores nothing) when the put was aborted.
struct Streamed {
    receiver: tokio::sync::mpsc::Receiver<Bytes>,
    aborted: Arc<AtomicBool>,
}

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        use std::task::Poll;
        match self.receiver.poll_recv(cx) {
            Poll::Ready(Some(chunk)) => Poll::Ready(Some(Ok(http_body::Frame::data(chunk)))),
            Poll::Ready(None) if self.aborted.load(Ordering::Acquire) => {
                Poll::Ready(Some(Err(Status::cancelled("the put was aborted"))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A chunk of a streamed put's body, holding its batch's release signal until the
/// connection drops it (every slice of it written).
struct Held {
    chunk: Bytes,
    _release: Arc<tokio::sync::oneshot::Sender<()>>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.chunk
    }
}

/// Messages a streamed put keeps queued ahead of the connection.
const QUEUED: usize = 8;

impl Client {
    /// Starts a put of `name`, in form `form`, whose rows [`put_batch`](Self::put_batch)
    /// sends as they come; [`finish_put`](Self::finish_put) ends it.
    pub fn put_stream(&self, name: &str, form: ItemForm) -> ClientResult<PutStream> {
        crate::names::check_name(name).map_err(|e| {
            ClientError::Local(arrowbridge::Error::invalid(
                "the item's name",
                e.to_string(),
            ))
        })?;
        let (sender, receiver) = tokio::sync::mpsc::channel(QUEUED);
        let aborted = Arc::new(AtomicBool::new(false));
        let body = tonic::body::Body::new(Streamed {
            receiver,
            aborted: aborted.clone(),
        });
        let channel = self.channel.clone();
        let authorization = self.header_authorization();
        let what = format!("put {name:?}");
        let task = self.runtime.spawn(async move {
            let acks = do_put_body(channel, authorization.as_ref(), body, &what).await?;
            Ok(acks.last().map_or(0, super::acknowledged_rows))
        });
        Ok(PutStream {
            what: format!("put {name:?}"),
            name: name.to_string(),
            form,
            schema: None,
            sender: Some(sender),
            aborted,
            task: Some(task),
            batches: 0,
            rows: 0,
            ended: false,
        })
    }

    /// Sends `columns` (arrays that share their first axis: rows of the item) as the next
    /// batch of `put`. Every batch has the first one's columns, dtypes and row shapes. A
    /// batch that fails, runs out of time or is interrupted resets the put. It returns once
    /// the connection has written the batch (its messages view the arrays, not copies): the
    /// arrays may then be refilled for the next batch.
    pub fn put_batch(
        &self,
        put: &mut PutStream,
        columns: &[(&str, &ArrowTensor)],
    ) -> ClientResult<()> {
        let owned = tensor_columns(columns);
        self.put_columns_batch(put, &column_refs(&owned))
    }

    /// [`put_batch`](Self::put_batch), as a future (dropping it unfinished leaves the put
    /// unusable: [`abort_put`](Self::abort_put) it).
    pub async fn put_batch_async(
        &self,
        put: &mut PutStream,
        columns: &[(&str, &ArrowTensor)],
    ) -> ClientResult<()> {
        let owned = tensor_columns(columns);
        self.put_columns_batch_async(put, &column_refs(&owned))
            .await
    }

    /// Sends `columns`, some of them ragged data (one row per array, as
    /// [`put_columns`](Self::put_columns) takes them), as the next batch of `put`; see
    /// [`put_batch`](Self::put_batch). A ragged column keeps the first batch's value type,
    /// rank, `dim_names` and `permutation`; a stream declares no `uniform_shape` for it (a
    /// later batch may vary where the first did not).
    pub fn put_columns_batch(
        &self,
        put: &mut PutStream,
        columns: &[(&str, &Column)],
    ) -> ClientResult<()> {
        let what = format!("{}: batch {}", put.what, put.batches);
        match self.block_on(&what, self.put_columns_batch_async(put, columns)) {
            Ok(sent) => sent,
            Err(stopped) => {
                put.abort();
                Err(stopped)
            }
        }
    }

    /// [`put_columns_batch`](Self::put_columns_batch), as a future (see
    /// [`put_batch_async`](Self::put_batch_async)).
    pub async fn put_columns_batch_async(
        &self,
        put: &mut PutStream,
        columns: &[(&str, &Column)],
    ) -> ClientResult<()> {
        let encoded = match super::tensor_columns(columns) {
            Some(tensors) => {
                let rows = tensors
                    .first()
                    .map_or(0, |(_, t)| t.shape().first().copied().unwrap_or(1));
                encode_batch(put, &tensors, rows).map(|chunks| (chunks, rows))
            }
            None => encode_ragged_batch(put, columns),
        };
        let (chunks, rows) = match encoded {
            Ok(encoded) => encoded,
            Err(e) => {
                put.abort();
                return Err(e);
            }
        };
        let sender = put.sender.clone().ok_or_else(|| finished(&put.what))?;
        // The chunks view the caller's arrays, which the caller may refill once this
        // returns (a generator that reuses one buffer): wait until the connection has let go
        // of every chunk, written to the socket, before returning.
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let release = Arc::new(release);
        for chunk in chunks {
            let chunk = Bytes::from_owner(Held {
                chunk,
                _release: release.clone(),
            });
            if sender.send(chunk).await.is_err() {
                // The call ended: its own error says why.
                put.sender = None;
                let task = put.task.take().ok_or_else(|| finished(&put.what))?;
                return match task.await {
                    Ok(Err(e)) => Err(e),
                    _ => Err(finished(&put.what)),
                };
            }
        }
        drop(release);
        // Resolves (with an error: nothing is ever sent) once the last chunk is dropped.
        let _ = released.await;
        put.batches += 1;
        put.rows += rows;
        Ok(())
    }

    /// Ends `put`: the server stores what it received as one version; the rows it
    /// acknowledged.
    pub fn finish_put(&self, mut put: PutStream) -> ClientResult<usize> {
        let what = put.what.clone();
        match self.block_on(&what, self.finish_put_async(&mut put)) {
            Ok(result) => result,
            // Past the end of the stream the server may store the item whatever the client
            // does: the error says so. Before it, the put is reset (by its drop).
            Err(stopped) if put.ended => Err(stopped.after_the_stream_ended()),
            Err(stopped) => Err(stopped),
        }
    }

    /// [`finish_put`](Self::finish_put), as a future. Dropped before the stream has ended
    /// (all batches read by the connection), it leaves the put to be reset; dropped after,
    /// the server may store the item.
    pub async fn finish_put_async(&self, put: &mut PutStream) -> ClientResult<usize> {
        if put.schema.is_none() {
            put.abort();
            return Err(ClientError::Local(arrowbridge::Error::Shape {
                context: put.what.clone(),
                message: "the stream had no batches; there is nothing to store".into(),
            }));
        }
        // The batches queued go out first: a deadline that passes meanwhile resets the put
        // and the server stores nothing. Only then does the stream end.
        if let Some(sender) = &put.sender {
            let _drained = sender.reserve_many(QUEUED).await;
        }
        put.sender = None;
        put.ended = true;
        let task = put.task.as_mut().ok_or_else(|| finished(&put.what))?;
        let joined = task.await;
        put.task = None;
        match joined {
            Ok(result) => result,
            Err(join) => Err(ClientError::Local(arrowbridge::Error::invalid(
                &put.what,
                format!("the put failed: {join}"),
            ))),
        }
    }

    /// Abandons `put`: the DoPut is reset and the server stores nothing.
    pub fn abort_put(&self, mut put: PutStream) {
        put.abort();
    }
}

/// The gRPC-framed bytes of the next batch of `put` (`rows` rows of `columns`): the schema
/// first (naming the item) when it is the first batch.
fn encode_batch(
    put: &mut PutStream,
    columns: &[(&str, &ArrowTensor)],
    rows: usize,
) -> ClientResult<Vec<Bytes>> {
    let what = format!("{}: batch {}", put.what, put.batches);
    if let Some((name, _)) = columns.iter().find(|(_, t)| t.shape().is_empty()) {
        return Err(ClientError::Local(arrowbridge::Error::Shape {
            context: what,
            message: format!(
                "{name:?} is a 0-d array (a scalar); a streamed put's batches are rows: \
                 arrays of at least one dimension"
            ),
        }));
    }
    if columns
        .iter()
        .any(|(_, t)| t.shape().first().copied().unwrap_or(1) != rows)
    {
        let lengths: Vec<String> = columns
            .iter()
            .map(|(n, t)| format!("{n}: {:?}", t.shape()))
            .collect();
        return Err(ClientError::Local(arrowbridge::Error::Shape {
            context: what,
            message: format!(
                "a streamed put's arrays must share their first axis (rows); got {}",
                lengths.join(", ")
            ),
        }));
    }
    let (schema, batches) = arrowbridge::ipc::wire_batches(columns, MAX_FLIGHT_DATA)?;
    let schema = naming_form(&schema, put.form);
    if schema.fields().iter().any(|f| {
        f.metadata()
            .get(arrowbridge::ipc::FORM_KEY)
            .map(String::as_str)
            == Some("flat")
    }) {
        return Err(ClientError::Local(arrowbridge::Error::Shape {
            context: what,
            message: format!(
                "a row is larger than a message ({MAX_FLIGHT_DATA} bytes); send fewer \
                 columns or split each row"
            ),
        }));
    }
    // The first batch's rows, more maybe to follow: a server that lands the stream in one
    // buffer per column may set aside more at once.
    let schema = Arc::new(arrowbridge::landing::announcing_at_least(&schema, rows));
    frame_batch(put, schema, &batches, &what)
}

/// The gRPC-framed bytes of the next batch of `put`, `columns` with ragged data among them,
/// and its rows: views of the columns ([`arrowbridge::ipc::record_batches_of`]) in messages
/// of whole rows, as a whole put sends them.
fn encode_ragged_batch(
    put: &mut PutStream,
    columns: &[(&str, &Column)],
) -> ClientResult<(Vec<Bytes>, usize)> {
    let what = format!("{}: batch {}", put.what, put.batches);
    let context = |e: arrowbridge::Error| {
        ClientError::Local(arrowbridge::Error::Shape {
            context: what.clone(),
            message: e.to_string(),
        })
    };
    // No uniform_shape: what the first batch's rows share, a later batch's may not.
    let streamed: Vec<(&str, Column)> = columns
        .iter()
        .map(|(name, column)| {
            Ok((
                *name,
                match column {
                    Column::Tensor(t) => Column::Tensor(t.clone()),
                    Column::Ragged(parts) => Column::Ragged(
                        parts
                            .iter()
                            .map(|p| {
                                let meta = RaggedMetadata {
                                    uniform_shape: None,
                                    ..p.metadata().clone()
                                };
                                p.clone().with_metadata(meta)
                            })
                            .collect::<arrowbridge::Result<_>>()?,
                    ),
                },
            ))
        })
        .collect::<arrowbridge::Result<_>>()
        .map_err(context)?;
    let refs: Vec<(&str, &Column)> = streamed.iter().map(|(n, c)| (*n, c)).collect();
    let batches = arrowbridge::ipc::record_batches_of(&refs).map_err(context)?;
    // Rows travel whole, in messages the server accepts (headroom for the header, padding).
    arrowbridge::ipc::check_row_sizes(&batches, MAX_MESSAGE - (1 << 20)).map_err(context)?;
    let rows = batches.iter().map(RecordBatch::num_rows).sum();
    // Rows not known in advance: the server lands each message as it arrives. (A stream of
    // tensors announces its first batch's rows instead, and lands in one buffer per column
    // that grows: a stored item of one batch, which kernels take without a copy.)
    let schema = naming_form(
        &arrowbridge::landing::announcing_a_stream(&batches[0].schema()),
        put.form,
    );
    Ok((frame_batch(put, schema, &batches, &what)?, rows))
}

/// Tensors as columns (the arrays are shared, not copied).
fn tensor_columns<'a>(columns: &[(&'a str, &ArrowTensor)]) -> Vec<(&'a str, Column)> {
    columns
        .iter()
        .map(|(name, t)| (*name, Column::Tensor((*t).clone())))
        .collect()
}

/// Named columns as [`Client::put_columns_batch`] takes them.
fn column_refs<'a>(columns: &'a [(&'a str, Column)]) -> Vec<(&'a str, &'a Column)> {
    columns.iter().map(|(n, c)| (*n, c)).collect()
}

/// `schema` naming the item's form.
fn naming_form(schema: &Schema, form: ItemForm) -> SchemaRef {
    let mut metadata = schema.metadata().clone();
    metadata.insert(ITEM_KEY.to_string(), form.name().to_string());
    Arc::new(schema.clone().with_metadata(metadata))
}

/// The gRPC-framed bytes of `batches` (of `schema`) as the next batch of `put`: the schema
/// first (naming the item) when it is the first batch, which every later one must match.
fn frame_batch(
    put: &mut PutStream,
    schema: SchemaRef,
    batches: &[RecordBatch],
    what: &str,
) -> ClientResult<Vec<Bytes>> {
    let what = what.to_string();
    let first = match &put.schema {
        None => true,
        Some(expected) if expected.fields() == schema.fields() => false,
        Some(expected) => {
            return Err(ClientError::Local(arrowbridge::Error::Shape {
                context: what,
                message: format!(
                    "its columns {} differ from the first batch's {}",
                    describe(&schema),
                    describe(expected)
                ),
            }))
        }
    };
    let batches = batches
        .iter()
        .map(|b| super::with_schema(b, &schema))
        .collect::<ClientResult<Vec<_>>>()?;
    // The batch's bytes as they travel: views of its arrays where they can be.
    let viewed = if first {
        let descriptor = FlightDescriptor::new_path(vec![put.name.clone()]);
        Messages::new(Some(descriptor), &schema, &batches, MAX_FLIGHT_DATA, &what)?
    } else {
        Messages::batches_only(&schema, &batches, MAX_FLIGHT_DATA, &what)?
    };
    let chunks = match viewed {
        Some(messages) => messages.into_chunks(),
        None => {
            let mut messages = arrow_flight::utils::batches_to_flight_data(&schema, &batches)
                .map_err(arrowbridge::Error::from)?;
            if first {
                messages[0].flight_descriptor =
                    Some(FlightDescriptor::new_path(vec![put.name.clone()]));
            } else {
                messages.remove(0);
            }
            messages
                .iter()
                .map(|data| framed(data, &what))
                .collect::<Result<Vec<_>, Status>>()?
        }
    };
    if first {
        put.schema = Some(schema);
    }
    Ok(chunks)
}

/// `data` as one gRPC message.
fn framed(data: &FlightData, what: &str) -> Result<Bytes, Status> {
    let len = data.encoded_len();
    let mut framed = Vec::with_capacity(5 + len);
    grpc::prefix(&mut framed, len, what)?;
    data.encode(&mut framed)
        .map_err(|e| Status::internal(format!("{what}: {e}")))?;
    Ok(framed.into())
}

fn finished(what: &str) -> ClientError {
    ClientError::Local(arrowbridge::Error::invalid(
        what,
        "the put was already finished or aborted",
    ))
}

/// A schema's columns, for errors: `name: type` each.
fn describe(schema: &Schema) -> String {
    let fields: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect();
    format!("[{}]", fields.join(", "))
}
