//! The Flight RPCs: DoPut/DoGet store and serve named arrays, DoExchange runs kernels.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use arrow_ipc::writer::IpcWriteOptions;
use arrow_schema::{Schema, SchemaRef};
use arrowbridge::{ArrowTensor, Params, Registry};
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::error::{FlightServerError, Result};
use crate::names::check_name;
use crate::server::store::{Store, Stored, Undone, VersionError};
use crate::shards::{ShardMap, SHARDS_KEY};
use crate::shm;
use crate::wire::protocol::{
    ExchangeArg, ExchangeCommand, ItemTicket, MapOrder, PutAck, RaggedColumns, StoredRows,
};
use crate::wire::receive::{next_data, receive, schema_message, Decoded, Received};
use crate::wire::MAX_FLIGHT_DATA;

/// The arrowbridge Flight service.
pub struct Service {
    store: Arc<Store>,
    registry: Arc<Registry>,
    token: Option<String>,
    /// The socket that hands out shared memory, when the server offers it.
    shm: Option<std::path::PathBuf>,
    /// This server's id, in every shared-memory reply: a client checks that the socket it
    /// found answers for the server it asked.
    instance: String,
}

/// Stores a put of `rows` rows (`is_map`: a sharded item's map) with `store`, and its
/// acknowledgement: with the map it replaced, for a map. Writing (and fsyncing) a file
/// blocks, so `store` runs off the async workers; so does freeing the item it replaced,
/// before the acknowledgement, so that the next put of the same size lands in its memory
/// rather than in pages never touched yet.
async fn acknowledge(
    rows: usize,
    is_map: bool,
    store: impl FnOnce() -> Result<Option<Arc<Stored>>> + Send + 'static,
) -> Result<PutResult, Status> {
    let replaced = tokio::task::spawn_blocking(move || {
        let replaced = store()?;
        Ok::<_, FlightServerError>(match replaced {
            Some(item) if is_map => item.shards.clone(),
            _ => None,
        })
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))??;
    Ok(PutResult {
        app_metadata: PutAck { rows, replaced }.to_bytes().into(),
    })
}

/// The body of `undo_map` or `delete_map` (`action`).
fn map_order(action: &str, body: &str) -> Result<MapOrder, Status> {
    serde_json::from_str(body).map_err(|e| {
        Status::invalid_argument(format!(
            "{action} needs {{\"name\": ..., \"order\": [ns, token]}}: {e}"
        ))
    })
}

fn descriptor_name(descriptor: &FlightDescriptor) -> Result<String> {
    let name = descriptor.path.first().ok_or_else(|| {
        FlightServerError::BadRequest("the descriptor needs a path: [name]".into())
    })?;
    check_name(name)?;
    Ok(name.clone())
}

/// Items larger than this are offered as several endpoints (row ranges) that clients may
/// fetch in parallel.
pub const PART_BYTES: usize = 64 << 20;
/// The most endpoints one item is offered as.
pub const MAX_ENDPOINTS: usize = 4;

/// The row ranges a stored item is offered as: one, or up to [`MAX_ENDPOINTS`] of about
/// [`PART_BYTES`] each.
fn row_ranges(stored: &Stored) -> Vec<std::ops::Range<usize>> {
    let rows = stored.rows();
    let parts = stored
        .bytes()
        .div_ceil(PART_BYTES)
        .clamp(1, MAX_ENDPOINTS)
        .min(rows.max(1));
    let step = rows.div_ceil(parts).max(1);
    (0..parts)
        .map(|i| (i * step).min(rows)..((i + 1) * step).min(rows))
        .collect()
}

fn flight_info(
    name: &str,
    stored: &Stored,
    shm: Option<&std::path::Path>,
) -> Result<FlightInfo, Status> {
    // Shapes and dtypes, for clients that do not read extension metadata.
    let columns: Vec<serde_json::Value> = stored
        .schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut column =
                serde_json::json!({"name": f.name(), "arrow_type": f.data_type().to_string()});
            if let Some((dtype, shape)) = stored.column_shape(i) {
                column["dtype"] = dtype.name().into();
                column["shape"] = shape.into();
            }
            column
        })
        .collect();
    let mut metadata = serde_json::json!({
        "rows": stored.rows(),
        "bytes": stored.bytes(),
        "columns": columns,
        "version": stored.version,
    });
    if let Some(path) = shm {
        // Clients on this host and of this user may fetch the item as shared memory there.
        metadata["shm"] = format!("arrowbridge+shm://{}", path.display()).into();
    }
    if let Some(map) = &stored.shards {
        metadata["shards"] = map.shards.len().into();
    }
    let mut info = FlightInfo::new()
        .try_with_schema(&stored.schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_descriptor(FlightDescriptor::new_path(vec![name.to_string()]))
        .with_total_records(stored.rows() as i64)
        .with_total_bytes(stored.bytes() as i64)
        .with_ordered(true)
        .with_app_metadata(metadata.to_string());
    if let Some(map) = &stored.shards {
        // One endpoint per shard, in row order, each listing every replica.
        for shard in &map.shards {
            let mut endpoint = FlightEndpoint::new()
                .with_ticket(Ticket::new(shard.name.clone()))
                .with_app_metadata(serde_json::json!({"rows": shard.rows}).to_string());
            for location in &shard.locations {
                endpoint = endpoint.with_location(location.clone());
            }
            info = info.with_endpoint(endpoint);
        }
        return Ok(info);
    }
    // Every endpoint names the version this FlightInfo describes: a client that follows them
    // while a put replaces the item reads this version, or is told it is gone.
    for range in row_ranges(stored) {
        let ticket = ItemTicket {
            version: Some(stored.version),
            rows: Some([range.start, range.end]),
            ..ItemTicket::whole(name)
        };
        info =
            info.with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket.to_bytes())));
    }
    Ok(info)
}

/// The positions of `columns` in `schema`, in the order named: a ticket's projection.
fn column_indices(name: &str, schema: &Schema, columns: &[String]) -> Result<Vec<usize>, Status> {
    columns
        .iter()
        .map(|column| {
            schema.index_of(column).map_err(|_| {
                let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                Status::invalid_argument(format!(
                    "ticket for column {column:?} of {name:?}, which has columns {have:?}"
                ))
            })
        })
        .collect()
}

/// Rows `range` of `batches` (slices: views, no copies).
fn rows_of(batches: &[RecordBatch], range: std::ops::Range<usize>) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut start = 0;
    for batch in batches {
        let end = start + batch.num_rows();
        let (from, to) = (range.start.max(start), range.end.min(end));
        if from < to {
            out.push(batch.slice(from - start, to - from));
        }
        start = end;
    }
    out
}

/// The batches of an item as they travel, the schema announcing their rows: as they are
/// when each row fits in a message, laid out flat ([`arrowbridge::ipc::wire_batches`]) when
/// one does not (an item put as a single large row by another writer, or a data directory
/// file of arrays of different lengths). Ragged columns travel as they are: their rows are
/// whole in any message up to [`crate::MAX_MESSAGE`].
fn wire(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    // Ragged columns (rows of different sizes) travel as they are, a large row whole.
    let tensors = arrowbridge::landing::row_bytes(&schema).is_some();
    let oversized = tensors
        && batches.iter().any(|b| {
            b.num_rows() > 0 && b.get_array_memory_size() / b.num_rows() > MAX_FLIGHT_DATA
        });
    if !oversized {
        let rows = batches.iter().map(RecordBatch::num_rows).sum();
        let schema = Arc::new(arrowbridge::landing::announcing(&schema, rows));
        return Ok((schema, batches));
    }
    let tensors = arrowbridge::ipc::tensors_of(&schema, &batches)?;
    let columns: Vec<(&str, &ArrowTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let (wire_schema, batches) = arrowbridge::ipc::wire_batches(&columns, MAX_FLIGHT_DATA)?;
    // The item's own schema metadata (its form) travels too.
    let mut metadata = schema.metadata().clone();
    metadata.extend(wire_schema.metadata().clone());
    Ok((
        Arc::new(wire_schema.as_ref().clone().with_metadata(metadata)),
        batches,
    ))
}

fn encode(
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> BoxStream<'static, Result<FlightData, Status>> {
    if let Some(messages) = crate::wire::framing::flight_data(&schema, &batches, MAX_FLIGHT_DATA) {
        return stream::iter(messages.into_iter().map(Ok)).boxed();
    }
    // The encoder wants every batch to carry exactly the schema it sends (which may have
    // more metadata than the stored batches: the rows it announces).
    let batches = batches.into_iter().map({
        let schema = schema.clone();
        move |b| {
            let options = RecordBatchOptions::new().with_row_count(Some(b.num_rows()));
            RecordBatch::try_new_with_options(schema.clone(), b.columns().to_vec(), &options)
                .map_err(FlightError::from)
        }
    });
    FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .with_max_flight_data_size(MAX_FLIGHT_DATA)
        .build(stream::iter(batches))
        .map_err(Status::from)
        .boxed()
}

fn column_tensor(schema: &SchemaRef, batches: &[RecordBatch], name: &str) -> Result<ArrowTensor> {
    let (index, _) = schema
        .column_with_name(name)
        .ok_or_else(|| FlightServerError::BadRequest(format!("no column {name:?} was sent")))?;
    Ok(arrowbridge::ipc::column_across(schema, batches, index)?)
}

impl Service {
    /// A service over `store` running `registry`'s kernels, requiring `token` if given.
    pub fn new(store: Arc<Store>, registry: Arc<Registry>, token: Option<String>) -> Self {
        Service {
            store,
            registry,
            token,
            shm: None,
            instance: String::new(),
        }
    }

    /// Stores the item a DoPut stream of `messages` carries; its acknowledgement. The RPC
    /// handler calls this with the client's stream; tests and fuzzers call it in-process.
    pub async fn put_messages<S>(&self, messages: S) -> Result<PutResult, Status>
    where
        S: futures::Stream<Item = Result<FlightData, Status>> + Send + Unpin + 'static,
    {
        if self.store.has_data_dir() {
            return self.put_to_file(messages).await;
        }
        // A stream that does not announce its rows is charged as it comes: past the
        // server's memory budget it is refused, before it is all in memory.
        let store = self.store.clone();
        let mut name: Option<String> = None;
        let mut received = 0usize;
        let budgeted = messages.map(move |message| {
            let data = message?;
            if name.is_none() {
                // The first message names the item; a put without a name could not be
                // charged as it comes, so it is refused before the rest is received.
                name = (data.flight_descriptor.as_ref()).and_then(|d| d.path.first().cloned());
                if name.is_none() {
                    return Err(Status::invalid_argument(
                        "DoPut needs a descriptor with a path: [name]",
                    ));
                }
            }
            received = received.saturating_add(data.data_body.len());
            if let Some(name) = &name {
                store.admits(name, received).map_err(Status::from)?;
            }
            Ok(data)
        });
        self.store_received(receive(budgeted, "DoPut").await?).await
    }

    /// With a data directory: stores the item a DoPut stream of `messages` carries by
    /// writing its batches to the item's file as they arrive (on a blocking thread, two
    /// batches queued), so that memory holds a few messages whatever the item's size. The
    /// file is committed, and the item replaced, when the stream ends whole; a stream that
    /// fails or is cut leaves nothing (the temporary file is removed).
    async fn put_to_file<S>(&self, mut messages: S) -> Result<PutResult, Status>
    where
        S: futures::Stream<Item = Result<FlightData, Status>> + Send + Unpin + 'static,
    {
        /// What the receiving task hands the writing thread.
        enum Next {
            Batch(RecordBatch),
            End,
        }
        const WHAT: &str = "DoPut";
        let mut descriptor = None;
        let first = next_data(&mut messages, &mut descriptor).await?;
        let descriptor = descriptor.ok_or_else(|| {
            Status::invalid_argument("DoPut needs a descriptor with a path: [name]")
        })?;
        let name = descriptor_name(&descriptor)?;
        let first = first.ok_or_else(|| Status::invalid_argument("DoPut sent no schema"))?;
        let schema = arrowbridge::landing::unannounced(&*schema_message(WHAT, &first)?);
        let store = self.store.clone();
        let file = {
            let name = name.clone();
            tokio::task::spawn_blocking(move || store.begin_file(&name))
                .await
                .map_err(|e| Status::internal(e.to_string()))??
                .ok_or_else(|| Status::internal("the store has no data directory"))?
        };
        let (send, mut queue) = tokio::sync::mpsc::channel::<Next>(2);
        let writer = tokio::task::spawn_blocking(move || {
            let mut rows = 0usize;
            let batches = std::iter::from_fn(|| match queue.blocking_recv() {
                Some(Next::Batch(batch)) => {
                    rows = rows.saturating_add(batch.num_rows());
                    Some(Ok(batch))
                }
                Some(Next::End) => None,
                None => Some(Err(arrowbridge::Error::invalid(
                    WHAT,
                    "the stream ended before its last batch; nothing was stored",
                ))),
            });
            let options = arrowbridge::ipc::WriteOptions {
                format: arrowbridge::ipc::IpcFormat::File,
                compression: None,
            };
            file.write_batches(&schema, batches, &options)?;
            Ok::<_, arrowbridge::Error>((file, rows, schema))
        });
        let mut decoded = Decoded::new(stream::iter([Ok(first)]).chain(messages), WHAT);
        let mut received = Ok(());
        while let Some(batch) = decoded.next().await {
            match batch {
                // A writer that stopped says why below.
                Ok(batch) => {
                    if send.send(Next::Batch(batch)).await.is_err() {
                        break;
                    }
                }
                Err(status) => {
                    received = Err(status);
                    break;
                }
            }
        }
        if received.is_ok() {
            let _ = send.send(Next::End).await;
        }
        drop(send);
        let written = writer.await.map_err(|e| Status::internal(e.to_string()))?;
        received?;
        let (file, rows, schema) = written.map_err(FlightServerError::from)?;
        i64::try_from(rows).map_err(|_| {
            Status::invalid_argument(format!("{WHAT}: more rows than an item can have"))
        })?;
        let is_map = ShardMap::of(&Arc::new(schema))?.is_some();
        if is_map && rows != 0 {
            return Err(Status::invalid_argument(format!(
                "the map of a sharded item ({SHARDS_KEY}) has no rows of its own; {rows} were sent"
            )));
        }
        let store = self.store.clone();
        acknowledge(rows, is_map, move || store.put_file(&name, file)).await
    }

    /// Stores the item a DoPut stream brought; its acknowledgement.
    pub(crate) async fn store_received(&self, received: Received) -> Result<PutResult, Status> {
        let Received {
            descriptor,
            schema,
            batches,
        } = received;
        let descriptor = descriptor.ok_or_else(|| {
            Status::invalid_argument("DoPut needs a descriptor with a path: [name]")
        })?;
        let name = descriptor_name(&descriptor)?;
        let schema = schema.ok_or_else(|| Status::invalid_argument("DoPut sent no schema"))?;
        let rows = crate::server::store::total_rows(&batches)?;
        if ShardMap::of(&schema)?.is_some() && rows != 0 {
            return Err(Status::invalid_argument(format!(
                "the map of a sharded item ({SHARDS_KEY}) has no rows of its own; {rows} were sent"
            )));
        }
        let store = self.store.clone();
        let stored = Stored::new(schema, batches);
        let is_map = stored.shards.is_some();
        acknowledge(rows, is_map, move || store.put(&name, stored)).await
    }

    /// Runs the kernel a DoExchange stream of `messages` asks for; the result's batches as
    /// they travel back. The RPC handler calls this with the client's stream; tests and
    /// fuzzers call it in-process.
    pub async fn exchange_messages<S>(
        &self,
        messages: S,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), Status>
    where
        S: futures::Stream<Item = Result<FlightData, Status>> + Send + Unpin + 'static,
    {
        let Received {
            descriptor,
            schema,
            batches,
        } = receive(messages, "DoExchange").await?;
        let command = descriptor
            .map(|d| d.cmd)
            .filter(|cmd| !cmd.is_empty())
            .ok_or_else(|| {
                Status::invalid_argument(
                    "DoExchange needs a descriptor whose command is JSON: {\"kernel\": ...}",
                )
            })?;
        let command: ExchangeCommand = serde_json::from_slice(&command)
            .map_err(|e| Status::invalid_argument(format!("bad DoExchange command: {e}")))?;
        let args = self.exchange_args(&command, schema, batches)?;
        // A kernel runs on the async worker that received the call only when it is quick:
        // constant-time, or on inputs too small to take long. Any other kernel, including
        // one on large stored arrays, would hold a worker that health checks and other
        // clients need: it runs on the blocking pool. Handing a small call over costs two
        // thread wake-ups, about a sixth of its time.
        let work: usize = args.iter().map(ArrowTensor::nbytes).sum();
        let quick = self
            .registry
            .get(&command.kernel)
            .is_ok_and(|k| k.constant_time || work <= INLINE_KERNEL_BYTES);
        if quick {
            return Ok(self.run_kernel(&command, &args)?);
        }
        let registry = self.registry.clone();
        let result = tokio::task::spawn_blocking(move || run_kernel(&registry, &command, &args))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(result)
    }

    /// Whether puts are stored in a data directory (written to their files as they arrive).
    pub(crate) fn stores_files(&self) -> bool {
        self.store.has_data_dir()
    }

    /// The item stored under `name`.
    pub(crate) fn item(&self, name: &str) -> Option<Arc<Stored>> {
        self.store.get(name)
    }

    /// Whether a put of `bytes` under `name` fits the server's memory budget now.
    pub(crate) fn admits(&self, name: &str, bytes: usize) -> Result<(), Status> {
        Ok(self.store.admits(name, bytes)?)
    }

    /// The service offering shared memory at the socket `path`, as server `instance`.
    pub fn with_shm(mut self, path: Option<std::path::PathBuf>, instance: &str) -> Self {
        self.shm = path;
        self.instance = instance.to_string();
        self
    }

    /// Serves one connection to the shared-memory socket until the client closes it, stops
    /// sending for [`SHM_IDLE`](SHM_IDLE), or takes longer than that to send one request. The
    /// connection is a task, not a thread: idle or slow clients cost no thread, and never
    /// starve gRPC calls; only the work of a request (packing an item into shared memory,
    /// storing one) runs on the blocking pool. Only a client of this process's user is
    /// served.
    pub async fn shm_connection(self: Arc<Self>, mut stream: tokio::net::UnixStream) {
        let own = stream.peer_cred().map(|c| c.uid()).ok() == Some(shm::own_uid());
        if !own {
            let denied =
                Status::permission_denied("shared memory is for clients of the server's own user");
            let _ = shm::send_async(&mut stream, &json(&shm::error_reply(&denied)), None).await;
            return;
        }
        // The greeting: a client checks that this is the server it asked before it sends its
        // token.
        let greeting = shm::Greeting {
            instance: self.instance.clone(),
        };
        if shm::send_async(&mut stream, &json(&greeting), None)
            .await
            .is_err()
        {
            return;
        }
        loop {
            let request = tokio::time::timeout(SHM_IDLE, shm::receive_async(&mut stream)).await;
            let Ok(Ok((header, fd))) = request else {
                return; // closed, broken, or silent for too long
            };
            let service = self.clone();
            let peer = std::os::fd::AsRawFd::as_raw_fd(&stream);
            // The connection stays open (this task holds it) while the request is handled.
            let handled = tokio::task::spawn_blocking(move || {
                service.shm_request(&header, fd, &|| shm::hung_up(peer))
            });
            let (mut reply, shared) = match handled.await {
                Ok(Ok((reply, shared))) => (reply, shared),
                Ok(Err(status)) => (shm::error_reply(&status), None),
                Err(e) => (shm::error_reply(&Status::internal(e.to_string())), None),
            };
            reply.instance = self.instance.clone();
            let fd = shared.as_ref().map(|s| s.segment.raw_fd());
            if shm::send_async(&mut stream, &json(&reply), fd)
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// One request of the shared-memory socket; `gone` says whether the client hung up (a
    /// put whose client gave up — its deadline passed, Ctrl+C — is not stored).
    fn shm_request(
        &self,
        header: &serde_json::Value,
        fd: Option<std::os::fd::OwnedFd>,
        gone: &dyn Fn() -> bool,
    ) -> Result<(shm::Reply, Option<shm::Shared>), Status> {
        // The token first: a client without it learns nothing, not even what is malformed.
        if let Some(token) = &self.token {
            let given = header
                .get("token")
                .and_then(|t| t.as_str())
                .unwrap_or_default();
            if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
                return Err(Status::unauthenticated("wrong or missing token"));
            }
        }
        let request: shm::Request = serde_json::from_value(header.clone()).map_err(|e| {
            Status::invalid_argument(format!(
                "bad shared-memory request ({e}); requests are {{\"op\": \"get\" | \"put\", \"name\": ...}}"
            ))
        })?;
        check_name(request.name())?;
        match request {
            shm::Request::Get { name, .. } => {
                let shared = self.store.shared(&name)?;
                let reply = shm::Reply {
                    ok: true,
                    layout: Some(shared.layout.clone()),
                    ..shm::Reply::default()
                };
                Ok((reply, Some(shared)))
            }
            shm::Request::Put { name, layout, .. } => {
                let what = format!("shared-memory put of {name:?}");
                let fd = fd.ok_or_else(|| {
                    Status::invalid_argument(format!("{what}: no memory came with it"))
                })?;
                let segment =
                    Arc::new(shm::Segment::adopt(&what, fd).map_err(FlightServerError::from)?);
                let (schema, batch) = shm::unpack(&what, segment.clone(), &layout)
                    .map_err(FlightServerError::from)?;
                arrowbridge::ipc::check_schema(&what, &schema).map_err(FlightServerError::from)?;
                let rows = batch.num_rows();
                let stored =
                    Stored::in_shared_memory(schema, batch, shm::Shared { segment, layout });
                if gone() {
                    return Err(Status::cancelled(format!(
                        "{what}: the client hung up before it was stored; nothing was stored"
                    )));
                }
                let replaced = self.store.put(&name, stored)?;
                // A large one is freed after the acknowledgement, on a thread of its own
                // (unmapping takes a while); starting a thread costs more than freeing a
                // small one.
                if let Some(replaced) = replaced.filter(|r| r.bytes() >= FREE_ASIDE_BYTES) {
                    std::thread::spawn(move || drop(replaced));
                }
                let reply = shm::Reply {
                    ok: true,
                    rows: Some(rows),
                    ..shm::Reply::default()
                };
                Ok((reply, None))
            }
        }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.check_token(
            request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
        )
    }

    /// Checks a call's `authorization` header against the server's token, if it has one.
    pub(crate) fn check_token(&self, authorization: Option<&str>) -> Result<(), Status> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = authorization.and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(Status::unauthenticated("wrong bearer token")),
            None => Err(Status::unauthenticated(
                "this server needs an 'authorization: Bearer <token>' header",
            )),
        }
    }

    /// The batches a DoGet of `ticket` sends, under the schema they travel with, and the
    /// version they are rows of: whoever sends them holds it until the last is sent, so that
    /// other readers of the same version find it too.
    pub(crate) async fn get_batches(
        &self,
        ticket: &[u8],
    ) -> Result<(SchemaRef, Vec<RecordBatch>, Arc<Stored>), Status> {
        let ItemTicket {
            name,
            version,
            rows,
            columns,
            at_most,
        } = ItemTicket::parse(ticket)?;
        let stored = match version {
            // A shard or part of one version of an item (written once, named by the
            // version) that is gone was deleted with that version: its reader is told so,
            // as the reader of a replaced version is, not that the name never existed.
            None if crate::names::is_written_once(&name) => {
                self.store.get(&name).ok_or_else(|| {
                    crate::error::with_kind(
                        Status::failed_precondition(format!(
                            "{name:?} held rows of a version that was replaced or deleted, \
                             and no reader holds it any more; ask for the item's FlightInfo \
                             again to read the version stored now"
                        )),
                        crate::error::KIND_REPLACED,
                    )
                })?
            }
            None => self.stored(&name)?,
            Some(version) => self
                .store
                .version(&name, version)
                .map_err(|e| version_status(&name, version, e))?,
        };
        if let Some(most) = at_most {
            let bytes = stored.bytes();
            if stored.shards.is_some() || bytes > most {
                return Err(crate::error::with_kind(
                    Status::failed_precondition(format!(
                        "{name:?} ({bytes} bytes{}) is not served whole to a ticket that \
                         accepts at most {most} bytes: read its FlightInfo's endpoints",
                        if stored.shards.is_some() {
                            ", sharded"
                        } else {
                            ""
                        }
                    )),
                    crate::error::KIND_NOT_WHOLE,
                ));
            }
        }
        if let Some(map) = &stored.shards {
            return Err(map.not_here(&name, "its rows"));
        }
        if let Some([start, end]) = rows {
            if end > stored.rows() {
                return Err(Status::out_of_range(format!(
                    "ticket for rows [{start}, {end}] of {name:?}, which has {} rows",
                    stored.rows()
                )));
            }
        }
        let projection = columns
            .map(|columns| column_indices(&name, &stored.schema, &columns))
            .transpose()?;
        let held = stored.clone();
        let wire_rows = move || {
            let batches = match rows {
                Some([start, end]) => rows_of(&stored.batches, start..end),
                None => stored.batches.clone(),
            };
            match projection {
                Some(indices) => {
                    let schema = Arc::new(
                        (stored.schema.project(&indices)).map_err(arrowbridge::Error::from)?,
                    );
                    let batches = batches
                        .iter()
                        .map(|b| b.project(&indices))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(arrowbridge::Error::from)?;
                    wire(schema, batches)
                }
                None => wire(stored.schema.clone(), batches),
            }
        };
        // Slicing and projecting are views, but laying out oversized rows copies them: only
        // a small item's are laid out on the async worker (handing the work over costs two
        // thread wake-ups, as much as the rest of a small get).
        let (schema, batches) = if held.bytes() <= INLINE_GET_BYTES {
            wire_rows()?
        } else {
            tokio::task::spawn_blocking(wire_rows)
                .await
                .map_err(|e| Status::internal(e.to_string()))??
        };
        Ok((schema, batches, held))
    }

    fn stored(&self, name: &str) -> Result<Arc<Stored>, Status> {
        self.store
            .get(name)
            .ok_or_else(|| Status::not_found(format!("no array called {name:?} is stored")))
    }

    /// The arrays a call's command names: columns it sent, or stored items.
    fn exchange_args(
        &self,
        command: &ExchangeCommand,
        schema: Option<SchemaRef>,
        batches: Vec<RecordBatch>,
    ) -> Result<Vec<ArrowTensor>, Status> {
        let schema = schema.unwrap_or_else(|| Arc::new(arrow_schema::Schema::empty()));
        // A ragged kernel's first argument may be a stored ragged item: it is passed as the
        // kernel receives ragged data, its values and its rows' shapes.
        let ragged = self
            .registry
            .get(&command.kernel)
            .is_ok_and(|kernel| kernel.ragged)
            .then_some(command.kernel.as_str());
        match &command.args {
            Some(args) => {
                let mut tensors = Vec::with_capacity(args.len() + 1);
                for (i, arg) in args.iter().enumerate() {
                    let ragged = ragged.filter(|_| i == 0);
                    match arg {
                        ExchangeArg::Column(name) => {
                            tensors.push(column_tensor(&schema, &batches, name)?)
                        }
                        ExchangeArg::Ragged(RaggedColumns { values, shapes }) => {
                            if ragged.is_none() {
                                // An unknown kernel is that, not a misplaced argument.
                                self.registry
                                    .get(&command.kernel)
                                    .map_err(FlightServerError::from)?;
                                return Err(FlightServerError::BadRequest(format!(
                                    "{}: argument {i} is ragged data (a list of arrays), which \
                                     only a ragged kernel (ragged_sum, pad, or one declared \
                                     ragged) takes, as its first argument",
                                    command.kernel
                                ))
                                .into());
                            }
                            tensors.push(column_tensor(&schema, &batches, values)?);
                            tensors.push(column_tensor(&schema, &batches, shapes)?);
                        }
                        ExchangeArg::Stored(name) => {
                            tensors.extend(self.stored_arg(name, None, None, ragged)?)
                        }
                        ExchangeArg::StoredRows(StoredRows {
                            name,
                            version,
                            rows: [start, end],
                        }) => tensors.extend(self.stored_arg(
                            name,
                            *version,
                            Some(*start..*end),
                            ragged,
                        )?),
                    }
                }
                Ok(tensors)
            }
            None => Ok(schema
                .fields()
                .iter()
                .map(|f| column_tensor(&schema, &batches, f.name()))
                .collect::<Result<_>>()?),
        }
    }

    /// The first column of the stored item `name` (of `version`, when given), or its rows
    /// `rows` (a view, no copy), as a kernel argument: one tensor, or for ragged data (the
    /// first argument of the `ragged` kernel named) its values and its rows' shapes.
    fn stored_arg(
        &self,
        name: &str,
        version: Option<u64>,
        rows: Option<std::ops::Range<usize>>,
        ragged: Option<&str>,
    ) -> Result<Vec<ArrowTensor>, Status> {
        let stored = match version {
            Some(version) => self
                .store
                .version(name, version)
                .map_err(|e| version_status(name, version, e))?,
            None => self.store.get(name).ok_or_else(|| {
                FlightServerError::NotFound(format!("no array called {name:?} is stored"))
            })?,
        };
        if let Some(map) = &stored.shards {
            return Err(FlightServerError::Sharded(
                map.not_here(name, "a kernel call on it")
                    .message()
                    .to_string(),
            )
            .into());
        }
        let column = stored.schema.fields().first().ok_or_else(|| {
            FlightServerError::BadRequest(format!(
                "the stored item {name:?} has no columns, so it holds no array to pass to a kernel"
            ))
        })?;
        let total = stored.rows();
        if let Some(rows) = &rows {
            if rows.start > rows.end || rows.end > total {
                return Err(Status::out_of_range(format!(
                    "rows [{}, {}) of {name:?}, which has {total} rows",
                    rows.start, rows.end
                )));
            }
        }
        if arrowbridge::is_ragged_field(column) {
            let Some(kernel) = ragged else {
                return Err(FlightServerError::BadRequest(format!(
                    "the stored item {name:?} is ragged data (arrow.variable_shape_tensor), \
                     which only a ragged kernel (ragged_sum, pad, or one declared ragged) \
                     takes, as its first argument"
                ))
                .into());
            };
            let batches = match rows {
                Some(rows) => rows_of(&stored.batches, rows),
                None => stored.batches.clone(),
            };
            let parts = batches
                .iter()
                .map(|b| {
                    arrowbridge::RaggedTensor::from_arrow(column, &b.column(0).to_data(), true)
                })
                .collect::<arrowbridge::Result<Vec<_>>>()
                .map_err(FlightServerError::from)?;
            let joined = match parts.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(FlightServerError::BadRequest(format!(
                        "{kernel}: the stored item {name:?} has no rows to pass"
                    ))
                    .into())
                }
                many => arrowbridge::RaggedTensor::concat(many).map_err(FlightServerError::from)?,
            };
            return Ok(joined
                .to_kernel_args()
                .map_err(FlightServerError::from)?
                .into());
        }
        let Some(rows) = rows else {
            return Ok(vec![stored.tensor(column.name())?]);
        };
        let batches = rows_of(&stored.batches, rows.clone());
        let tensor = arrowbridge::ipc::column_across(&stored.schema, &batches, 0)
            .map_err(FlightServerError::from)?;
        if tensor.shape().first() != Some(&rows.len()) {
            return Err(Status::invalid_argument(format!(
                "rows of {name:?}: its array is not a column of rows (shape {:?})",
                stored.tensor(column.name())?.shape()
            )));
        }
        Ok(vec![tensor])
    }

    fn run_kernel(
        &self,
        command: &ExchangeCommand,
        args: &[ArrowTensor],
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        run_kernel(&self.registry, command, args)
    }
}

/// `message` as the JSON the shared-memory socket carries.
fn json<T: serde::Serialize>(message: &T) -> serde_json::Value {
    serde_json::to_value(message).expect("the protocol's messages are plain JSON")
}

/// How long a shared-memory connection may stay silent, or take to send one request.
pub const SHM_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Inputs up to this size let a kernel run on the async worker (see
/// [`Service::exchange_messages`]). Small enough that a kernel whose result dwarfs its
/// inputs stays short too: a broadcast `add` of 1024 × 1 and 1 × 1024 float64 makes 8 MiB.
const INLINE_KERNEL_BYTES: usize = 16 << 10;

/// Items up to this size are laid out for a DoGet on the async worker that received it
/// (see [`Service::get_batches`]).
const INLINE_GET_BYTES: usize = 1 << 20;

/// The size from which a version a shared-memory put replaced is freed on a thread of its
/// own.
const FREE_ASIDE_BYTES: usize = 1 << 20;

/// Runs the kernel `command` names on `args`; its outputs as the batches they travel back
/// as.
fn run_kernel(
    registry: &Registry,
    command: &ExchangeCommand,
    args: &[ArrowTensor],
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let params = Params::from_json(&command.kernel, &command.params)?;
    let outputs = registry.call(&command.kernel, args, params)?;
    let names: Vec<String> = if outputs.len() == 1 {
        vec!["result".to_string()]
    } else {
        (0..outputs.len()).map(|i| format!("result_{i}")).collect()
    };
    let columns: Vec<(&str, &ArrowTensor)> =
        names.iter().map(String::as_str).zip(&outputs).collect();
    Ok(arrowbridge::ipc::wire_batches(&columns, MAX_FLIGHT_DATA)?)
}

/// The status of a ticket whose version cannot be read.
fn version_status(name: &str, version: u64, error: VersionError) -> Status {
    let message = match error {
        VersionError::Replaced { current } => format!(
            "version {version} of {name:?} was replaced (by version {current}) and no reader \
             holds it any more; ask for its FlightInfo again to read the version stored now"
        ),
        VersionError::Gone => {
            format!("version {version} of {name:?} was deleted and no reader holds it any more")
        }
    };
    crate::error::with_kind(
        Status::failed_precondition(message),
        crate::error::KIND_REPLACED,
    )
}

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[tonic::async_trait]
impl FlightService for Service {
    type HandshakeStream = BoxStream<'static, Result<HandshakeResponse, Status>>;
    type ListFlightsStream = BoxStream<'static, Result<FlightInfo, Status>>;
    type DoGetStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoPutStream = BoxStream<'static, Result<PutResult, Status>>;
    type DoActionStream = BoxStream<'static, Result<arrow_flight::Result, Status>>;
    type ListActionsStream = BoxStream<'static, Result<ActionType, Status>>;
    type DoExchangeStream = BoxStream<'static, Result<FlightData, Status>>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        self.authorize(&request)?;
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: Default::default(),
        };
        Ok(Response::new(stream::once(async { Ok(reply) }).boxed()))
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        self.authorize(&request)?;
        let items = self.store.list();
        // A sharded item is listed once, by its map: not its shards stored here too.
        let shards: std::collections::HashSet<&str> = items
            .iter()
            .filter_map(|(_, stored)| stored.shards.as_ref())
            .flat_map(|map| map.shards.iter().map(|s| s.name.as_str()))
            .collect();
        let infos: Vec<Result<FlightInfo, Status>> = items
            .iter()
            .filter(|(name, _)| !shards.contains(name.as_str()))
            .map(|(name, stored)| flight_info(name, stored, self.shm.as_deref()))
            .collect();
        Ok(Response::new(stream::iter(infos).boxed()))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(&request)?;
        let name = descriptor_name(request.get_ref())?;
        Ok(Response::new(flight_info(
            &name,
            self.stored(&name)?.as_ref(),
            self.shm.as_deref(),
        )?))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "poll_flight_info: every query here completes at once; use get_flight_info",
        ))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        self.authorize(&request)?;
        let name = descriptor_name(request.get_ref())?;
        let stored = self.stored(&name)?;
        let options = IpcWriteOptions::default();
        let result: SchemaResult = SchemaAsIpc::new(&stored.schema, &options)
            .try_into()
            .map_err(|e: arrow_schema::ArrowError| Status::internal(e.to_string()))?;
        Ok(Response::new(result))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        self.authorize(&request)?;
        let (schema, batches, held) = self.get_batches(&request.get_ref().ticket).await?;
        let version = tonic::metadata::MetadataValue::from(held.version);
        // The stream holds the version until its last message is sent (or it is cancelled).
        let stream = encode(schema, batches).map(move |message| {
            let _ = &held;
            message
        });
        let mut response = Response::new(stream.boxed());
        response
            .metadata_mut()
            .insert(crate::error::VERSION_KEY, version);
        Ok(response)
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        self.authorize(&request)?;
        let ack = self.put_messages(request.into_inner()).await?;
        Ok(Response::new(stream::once(async { Ok(ack) }).boxed()))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        self.authorize(&request)?;
        let action = request.into_inner();
        let body = std::str::from_utf8(&action.body)
            .unwrap_or_default()
            .to_string();
        let reply = match action.r#type.as_str() {
            "delete" => {
                let store = self.store.clone();
                let name = body.clone();
                let existed = tokio::task::spawn_blocking(move || store.delete(&name))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))??;
                if !existed {
                    return Err(Status::not_found(format!(
                        "no array called {body:?} is stored"
                    )));
                }
                serde_json::json!({"deleted": body})
            }
            "undo_map" => {
                let MapOrder { name, order } = map_order("undo_map", &body)?;
                let store = self.store.clone();
                let named = name.clone();
                let undone = tokio::task::spawn_blocking(move || store.undo(&named, &order))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))??;
                match undone {
                    Undone::GaveBack(map) => serde_json::json!({"undone": name, "now": map}),
                    Undone::Removed => serde_json::json!({"undone": name, "now": null}),
                    Undone::NotHeld => serde_json::json!({"undone": null}),
                }
            }
            "maps_below" => {
                let MapOrder { name, order } = map_order("maps_below", &body)?;
                serde_json::json!({"maps": self.store.maps_below(&name, &order)})
            }
            "delete_map" => {
                let MapOrder { name, order } = map_order("delete_map", &body)?;
                let store = self.store.clone();
                let named = name.clone();
                let removed = tokio::task::spawn_blocking(move || store.delete_map(&named, &order))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))??;
                let Some(map) = removed else {
                    return Err(Status::not_found(format!(
                        "no array called {name:?} is stored"
                    )));
                };
                serde_json::json!({"deleted": name, "replaced": map})
            }
            "list_kernels" => serde_json::json!(self
                .registry
                .iter()
                .map(|k| (k.name, k.signature))
                .collect::<BTreeMap<_, _>>()),
            "describe_kernels" => serde_json::json!(self
                .registry
                .iter()
                .map(|k| (
                    k.name,
                    serde_json::json!({
                        "signature": k.signature,
                        "params": k.params,
                        "arity": k.arity,
                        "distribution": k.distribution.to_json(),
                    })
                ))
                .collect::<BTreeMap<_, _>>()),
            "health" => serde_json::json!({"status": "ok", "stored": self.store.list().len()}),
            "shm" => match &self.shm {
                Some(path) => json(&shm::Offer {
                    location: format!("{}{}", shm::Offer::SCHEME, path.display()),
                    instance: self.instance.clone(),
                }),
                None => return Err(Status::not_found("this server offers no shared memory")),
            },
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown action {other:?}; actions: delete, list_kernels, describe_kernels, health, shm"
                )))
            }
        };
        let result = arrow_flight::Result::new(reply.to_string());
        Ok(Response::new(stream::once(async { Ok(result) }).boxed()))
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        self.authorize(&request)?;
        let actions = [
            ("delete", "Deletes the stored array named by the body"),
            (
                "undo_map",
                "Undoes the failed put of the order the JSON body names: where its map is \
                 stored, the map it replaced comes back; its map is refused afterwards",
            ),
            (
                "delete_map",
                "Deletes a sharded item as of the order the JSON body names, unless a newer \
                 put's map is stored; later maps no newer are refused",
            ),
            (
                "maps_below",
                "The maps older than the order the JSON body names that newer maps replaced \
                 here and that the server keeps to undo failed puts",
            ),
            ("list_kernels", "JSON object of kernel names and signatures"),
            (
                "describe_kernels",
                "JSON object of kernel names and their signature, parameters, arity and \
                 distribution over shards",
            ),
            ("health", "JSON status of the server"),
            (
                "shm",
                "JSON location of the shared-memory socket, for clients of this host and user",
            ),
        ]
        .map(|(name, doc)| {
            Ok(ActionType {
                r#type: name.into(),
                description: doc.into(),
            })
        });
        Ok(Response::new(stream::iter(actions).boxed()))
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        self.authorize(&request)?;
        let (schema, batches) = self.exchange_messages(request.into_inner()).await?;
        Ok(Response::new(encode(schema, batches)))
    }
}
