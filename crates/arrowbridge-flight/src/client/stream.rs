//! Reading an item in pieces: some of its rows and columns ([`Client::get_part`]), or all of
//! them as a stream of batches of bounded size ([`Client::stream`]).
//!
//! Both read one version: the tickets they send are cut from the endpoints of one FlightInfo
//! (`{"name", "version", "rows", "columns"}`, [`ItemTicket`]), so the server serves each piece
//! of that version or refuses it (`ItemReplaced`): never rows of two versions. A stream keeps
//! [`AHEAD`] batches in flight, each over a connection of its own, while the caller holds
//! the one before: its memory is a few batches whatever the item's size.

use std::collections::VecDeque;
use std::ops::Range;

use arrow_flight::{FlightEndpoint, FlightInfo, Ticket};
use arrow_schema::{Schema, SchemaRef};
use arrowbridge::ipc::Column;
use arrowbridge::landing::Destination;
use tokio::task::JoinHandle;

use super::{
    endpoint_rows, receive_from_server, service, Client, ClientError, ClientResult, Failures, Item,
    ItemForm, Route,
};
use crate::client::get::do_get_into;
use crate::wire::protocol::ItemTicket;
use crate::wire::MAX_FLIGHT_DATA;

/// Batches a stream fetches ahead of the one the caller reads.
pub const AHEAD: usize = 2;
/// The size a stream's batches aim at when the caller does not choose their rows: one
/// Flight message each.
pub const BATCH_BYTES: usize = MAX_FLIGHT_DATA;

/// Which part of an item to read.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// These columns, in this order; `None`: all of them.
    pub columns: Option<Vec<String>>,
    /// Rows `[start, end)`; `None`: all of them.
    pub rows: Option<Range<usize>>,
}

/// The rows of one endpoint that a read wants, cut into pieces as they are fetched.
struct Span {
    /// The endpoint's ticket (with the columns wanted), whose rows are narrowed per piece.
    base: ItemTicket,
    /// The row of the endpoint's ticket where the endpoint's rows begin, and the item's row
    /// there: a row of the item is row `ticket_start + (row - endpoint_start)` of the ticket.
    ticket_start: usize,
    endpoint_start: usize,
    /// The item's rows wanted from this endpoint.
    rows: Range<usize>,
    routes: Vec<Route>,
}

impl Span {
    /// The piece of the item's rows `rows` (within the span's).
    fn piece(&self, rows: Range<usize>) -> Piece {
        let at = |row: usize| self.ticket_start + (row - self.endpoint_start);
        let ticket = ItemTicket {
            rows: Some([at(rows.start), at(rows.end)]),
            ..self.base.clone()
        };
        Piece {
            ticket: ticket.to_bytes(),
            rows: rows.len(),
            routes: self.routes.clone(),
        }
    }
}

/// One DoGet of a stream or a part: rows of one endpoint, and where to ask for them.
#[derive(Clone)]
struct Piece {
    ticket: Vec<u8>,
    rows: usize,
    /// Replicas stand in for each other; tried in order.
    routes: Vec<Route>,
}

/// A stream of an item's batches, from [`Client::stream`]; [`Client::next_batch`] reads it.
pub struct ItemStream {
    what: String,
    form: ItemForm,
    schema: SchemaRef,
    rows: usize,
    /// Spans whose rows were not all asked for yet; the first from row `cursor` on.
    spans: VecDeque<Span>,
    cursor: usize,
    /// Rows per batch.
    step: usize,
    /// Pieces whose fetch failed, to ask for again first.
    retry: VecDeque<Piece>,
    /// The connections of the fetches ahead: per place in the queue, one per location.
    lanes: Vec<std::collections::HashMap<String, tonic::transport::Channel>>,
    /// Pieces asked for so far (which lane the next one takes).
    issued: usize,
    /// Pieces being fetched, in order.
    fetching: VecDeque<(Piece, JoinHandle<ClientResult<Columns>>)>,
    /// An item that cannot be cut into rows (its columns have different lengths): read
    /// whole, as one batch.
    whole: Option<String>,
}

impl std::fmt::Debug for ItemStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemStream")
            .field("what", &self.what)
            .field("rows", &self.rows)
            .field("spans", &self.spans.len())
            .field("fetching", &self.fetching.len())
            .finish()
    }
}

impl ItemStream {
    /// The form the item was put in.
    pub fn form(&self) -> ItemForm {
        self.form
    }

    /// The rows the stream carries in all.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The call that opened it (`stream "x"`), as its errors name it.
    pub fn what(&self) -> &str {
        &self.what
    }
}

impl Drop for ItemStream {
    fn drop(&mut self) {
        // Batches fetched ahead that nobody will read: their streams are reset.
        for (_, task) in self.fetching.drain(..) {
            task.abort();
        }
    }
}

type Columns = Vec<(String, Column)>;

/// Whether `schema`'s columns hold whole arrays rather than rows of them: laid out flat, or
/// one element each ([`arrowbridge::ipc::wire_batches`]), as arrays of different lengths
/// travel. Such an item has no rows to select.
fn whole_arrays(schema: &Schema) -> bool {
    schema.fields().iter().any(|f| {
        matches!(
            f.metadata()
                .get(arrowbridge::ipc::FORM_KEY)
                .map(String::as_str),
            Some("flat" | "element")
        )
    })
}

/// Whether a row of `schema` lands in one message and a destination can hold it.
fn landable(schema: &Schema) -> bool {
    arrowbridge::landing::row_bytes(schema)
        .is_some_and(|bytes| bytes.iter().sum::<usize>() <= MAX_FLIGHT_DATA)
}

fn invalid(what: &str, message: String) -> ClientError {
    ClientError::Local(arrowbridge::Error::Shape {
        context: what.to_string(),
        message,
    })
}

impl Client {
    /// The spans of endpoints that carry `selection` of the item `info` describes, with the
    /// schema they arrive in and the rows they hold in all.
    fn spans(
        &self,
        what: &str,
        info: &FlightInfo,
        schema: &SchemaRef,
        selection: &Selection,
        own: bool,
    ) -> ClientResult<(SchemaRef, usize, Vec<Span>)> {
        let projected = match &selection.columns {
            None => schema.clone(),
            Some(columns) => {
                let indices = columns
                    .iter()
                    .map(|c| {
                        schema.index_of(c).map_err(|_| {
                            let have: Vec<&str> =
                                schema.fields().iter().map(|f| f.name().as_str()).collect();
                            invalid(what, format!("no column {c:?}; its columns are {have:?}"))
                        })
                    })
                    .collect::<ClientResult<Vec<_>>>()?;
                std::sync::Arc::new(schema.project(&indices).map_err(arrowbridge::Error::from)?)
            }
        };
        let total = usize::try_from(info.total_records).map_err(|_| {
            invalid(
                what,
                "the server does not say how many rows it has".to_string(),
            )
        })?;
        let wanted = selection.rows.clone().unwrap_or(0..total);
        if wanted.start > wanted.end || wanted.end > total {
            return Err(invalid(
                what,
                format!(
                    "rows ({}, {}) are not within its {total} rows",
                    wanted.start, wanted.end
                ),
            ));
        }
        let endpoints: Vec<(FlightEndpoint, Range<usize>)> = if info.endpoint.is_empty() {
            let ticket = Ticket::new(info_name(info).unwrap_or_default());
            vec![(FlightEndpoint::new().with_ticket(ticket), 0..total)]
        } else if info.endpoint.len() == 1 {
            let range = endpoint_rows(&info.endpoint[0]).unwrap_or(0..total);
            vec![(info.endpoint[0].clone(), range)]
        } else {
            info.endpoint
                .iter()
                .map(|e| Some((e.clone(), endpoint_rows(e)?)))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    invalid(what, "its endpoints do not say which rows they hold".into())
                })?
        };
        let mut spans = Vec::new();
        for (endpoint, range) in endpoints {
            let (from, to) = (wanted.start.max(range.start), wanted.end.min(range.end));
            if from >= to {
                continue;
            }
            let base = ItemTicket::parse(&endpoint.ticket.clone().unwrap_or_default().ticket)
                .map_err(|s| {
                    invalid(
                        what,
                        format!("its endpoint's ticket cannot be cut: {}", s.message()),
                    )
                })?;
            spans.push(Span {
                ticket_start: base.rows.map_or(0, |[start, _]| start),
                endpoint_start: range.start,
                base: ItemTicket {
                    columns: selection.columns.clone(),
                    ..base
                },
                rows: from..to,
                routes: self.routes(&endpoint, own)?,
            });
        }
        Ok((projected, wanted.len(), spans))
    }

    /// The routes to each location of `endpoint`, over connections of their `own` or the
    /// client's, tried in turn ([`Route::in_turn`]).
    fn routes(&self, endpoint: &FlightEndpoint, own: bool) -> ClientResult<Vec<Route>> {
        if endpoint.location.is_empty() {
            return Ok(vec![self.route_to(None, own)?]);
        }
        let count = endpoint.location.len();
        (endpoint.location.iter().enumerate())
            .map(|(turn, l)| {
                Ok(self
                    .route_to(Some(l.uri.as_str()), own)?
                    .in_turn(turn, count))
            })
            .collect()
    }

    /// Rows and columns `selection` of the item stored under `name`, each column one
    /// contiguous, aligned buffer, read over gRPC (shared memory serves whole items only).
    pub fn get_part(&self, name: &str, selection: &Selection) -> ClientResult<Item> {
        self.block_on(
            &format!("get {name:?}"),
            self.get_part_async(name, selection),
        )?
    }

    /// [`get_part`](Self::get_part), as a future.
    pub async fn get_part_async(&self, name: &str, selection: &Selection) -> ClientResult<Item> {
        let what = format!("get {name:?}");
        let (info, schema) = self.described(name).await?;
        let form = ItemForm::of(&schema);
        if whole_arrays(&schema) {
            return Err(invalid(
                &what,
                "its arrays have different lengths, so it has no rows to select; get it whole"
                    .into(),
            ));
        }
        let (schema, rows, spans) = self.spans(&what, &info, &schema, selection, false)?;
        let pieces = spans.iter().map(|s| s.piece(s.rows.clone())).collect();
        let columns = fetch_all(&what, &schema, rows, pieces).await?;
        Ok(Item {
            form,
            columns,
            shared: false,
        })
    }

    /// A stream of the item stored under `name` (the `selection` of it), as batches of
    /// `batch_rows` rows (`None`: about 8 MiB, one message, each); read it with
    /// [`next_batch`](Self::next_batch).
    pub fn stream(
        &self,
        name: &str,
        selection: &Selection,
        batch_rows: Option<usize>,
    ) -> ClientResult<ItemStream> {
        let what = format!("stream {name:?}");
        let (info, schema) = self.block_on(&what, self.described(name))??;
        self.stream_of(name, info, schema, selection, batch_rows)
    }

    /// The stream of `selection` of the item `info` describes.
    fn stream_of(
        &self,
        name: &str,
        info: FlightInfo,
        schema: SchemaRef,
        selection: &Selection,
        batch_rows: Option<usize>,
    ) -> ClientResult<ItemStream> {
        let what = format!("stream {name:?}");
        if batch_rows == Some(0) {
            return Err(invalid(&what, "batch_rows must be at least 1".into()));
        }
        let form = ItemForm::of(&schema);
        if whole_arrays(&schema) {
            if selection.columns.is_some() || selection.rows.is_some() {
                return Err(invalid(
                    &what,
                    "its arrays have different lengths, so it has no rows or columns to \
                     select; stream it whole"
                        .into(),
                ));
            }
            return Ok(ItemStream {
                what,
                form,
                schema,
                rows: 0,
                spans: VecDeque::new(),
                cursor: 0,
                step: 1,
                retry: VecDeque::new(),
                lanes: Vec::new(),
                issued: 0,
                fetching: VecDeque::new(),
                whole: Some(name.to_string()),
            });
        }
        // Rows of different sizes (ragged columns): their mean, from the item's totals.
        let row_bytes: usize = match arrowbridge::landing::row_bytes(&schema) {
            Some(bytes) => bytes.iter().sum(),
            None => match (
                usize::try_from(info.total_bytes),
                usize::try_from(info.total_records),
            ) {
                (Ok(bytes), Ok(rows)) if rows > 0 => bytes / rows,
                _ => 0,
            },
        };
        let batch_rows = batch_rows.unwrap_or((BATCH_BYTES / row_bytes.max(1)).max(1));
        let (schema, rows, spans) = self.spans(&what, &info, &schema, selection, true)?;
        let cursor = spans.first().map_or(0, |s| s.rows.start);
        Ok(ItemStream {
            what,
            form,
            schema,
            rows,
            spans: spans.into(),
            cursor,
            step: batch_rows,
            retry: VecDeque::new(),
            lanes: vec![Default::default(); AHEAD],
            issued: 0,
            fetching: VecDeque::new(),
            whole: None,
        })
    }

    /// The next batch of `stream` (`None` at its end), in the item's form. When the wait
    /// runs out of time or is interrupted, the batch's fetch goes on and the next call
    /// waits for it again; a fetch that failed is started again by the next call.
    pub fn next_batch(&self, stream: &mut ItemStream) -> ClientResult<Option<Item>> {
        if let Some(name) = stream.whole.take() {
            return self.get(&name).map(Some);
        }
        let what = format!("{}'s next batch", stream.what());
        self.block_on(&what, self.next_batch_async(stream))
            .map_err(ClientError::batch_kept)?
    }

    /// [`next_batch`](Self::next_batch), as a future (over gRPC only). Dropping it
    /// unfinished leaves the batch's fetch going for the next call.
    pub async fn next_batch_async(&self, stream: &mut ItemStream) -> ClientResult<Option<Item>> {
        if let Some(name) = stream.whole.take() {
            return self.get_async(&name).await.map(Some);
        }
        while stream.fetching.len() < AHEAD {
            let Some(piece) = self.next_piece(stream) else {
                break;
            };
            let task = self.runtime.spawn(fetch(
                stream.what.clone(),
                stream.schema.clone(),
                piece.clone(),
            ));
            stream.fetching.push_back((piece, task));
        }
        // The fetch stays queued while it is awaited: a caller that stops waiting (out of
        // time, interrupted, cancelled) finds it there next time.
        let Some((_, task)) = stream.fetching.front_mut() else {
            return Ok(None);
        };
        let joined = task.await;
        let (piece, _) = stream
            .fetching
            .pop_front()
            .expect("the fetch awaited is queued");
        match joined {
            Ok(Ok(columns)) => Ok(Some(Item {
                form: stream.form,
                columns,
                shared: false,
            })),
            Ok(Err(e)) => {
                stream.retry.push_front(piece);
                Err(e)
            }
            Err(join) => Err(ClientError::Local(arrowbridge::Error::invalid(
                &stream.what,
                format!("the fetch of a batch failed: {join}"),
            ))),
        }
    }

    /// The next piece of `stream` to fetch (one that failed first), cut from its spans as it
    /// is needed (so that a stream of millions of batches holds a few), over the connections
    /// of its lane.
    fn next_piece(&self, stream: &mut ItemStream) -> Option<Piece> {
        if let Some(piece) = stream.retry.pop_front() {
            return Some(piece);
        }
        let span = stream.spans.front()?;
        let end = stream.cursor.saturating_add(stream.step).min(span.rows.end);
        let mut piece = span.piece(stream.cursor..end);
        if end == span.rows.end {
            stream.spans.pop_front();
            stream.cursor = stream.spans.front().map_or(0, |s| s.rows.start);
        } else {
            stream.cursor = end;
        }
        let lane = &mut stream.lanes[stream.issued % AHEAD];
        stream.issued += 1;
        let _runtime = self.runtime.enter(); // a channel's connection task is spawned on it
        for route in &mut piece.routes {
            let channel = lane
                .entry(route.location.clone())
                .or_insert_with(|| route.target.lazy());
            route.shared = Some(channel.clone());
        }
        Some(piece)
    }

    /// Opens a stream as [`stream`](Self::stream) does, as a future.
    pub async fn stream_async(
        &self,
        name: &str,
        selection: &Selection,
        batch_rows: Option<usize>,
    ) -> ClientResult<ItemStream> {
        let (info, schema) = self.described(name).await?;
        self.stream_of(name, info, schema, selection, batch_rows)
    }
}

/// The name a FlightInfo describes.
fn info_name(info: &FlightInfo) -> Option<String> {
    info.flight_descriptor.as_ref()?.path.first().cloned()
}

/// Fetches `pieces` (adding up to `rows` rows of `schema`) concurrently into one set of
/// columns.
async fn fetch_all(
    what: &str,
    schema: &SchemaRef,
    rows: usize,
    pieces: Vec<Piece>,
) -> ClientResult<Columns> {
    if landable(schema) {
        if let Some(mut destination) = Destination::new(what, schema.clone(), rows)? {
            let counts: Vec<usize> = pieces.iter().map(|p| p.rows).collect();
            let mut parts = destination.parts(&counts)?;
            let fetches = parts
                .iter_mut()
                .zip(&pieces)
                .map(|(part, piece)| async move {
                    let mut failures = Failures::default();
                    for route in &piece.routes {
                        part.rewind();
                        match do_get_into(route, &piece.ticket, what, schema, part).await {
                            Ok(()) => return Ok(()),
                            Err(e) if piece.routes.len() == 1 => return Err(e),
                            Err(e) => failures.push(&route.location, e),
                        }
                    }
                    Err(failures.into_error(&format!("{what}: a piece")))
                });
            futures::future::try_join_all(fetches).await?;
            for part in parts {
                part.finish()?;
            }
            let batch = destination.into_batch()?;
            return Ok(arrowbridge::ipc::columns_of(schema, &[batch])?);
        }
    }
    // Columns of other types, or rows larger than a message: decoded as they come.
    let mut batches = Vec::new();
    let mut received_schema = schema.clone();
    for piece in pieces {
        let (s, b) = decode_piece(&piece).await?;
        received_schema = s.unwrap_or(received_schema);
        batches.extend(b);
    }
    Ok(arrowbridge::ipc::columns_of(&received_schema, &batches)?)
}

/// One piece, as the batches it arrives in (decoded, not landed).
async fn decode_piece(
    piece: &Piece,
) -> ClientResult<(Option<SchemaRef>, Vec<arrow_array::RecordBatch>)> {
    let mut failures = Failures::default();
    for route in &piece.routes {
        let attempt = async {
            let request = route.request(Ticket::new(piece.ticket.clone()));
            let stream = (route
                .answer(async { service(route.channel().await?).do_get(request).await }))
            .await?
            .into_inner();
            receive_from_server(stream, "DoGet").await
        };
        match attempt.await {
            Ok(received) => return Ok((received.schema, received.batches)),
            Err(e) if piece.routes.len() == 1 => return Err(e),
            Err(e) => failures.push(&route.location, e),
        }
    }
    Err(failures.into_error("DoGet of a piece"))
}

/// One piece of a stream, as columns.
async fn fetch(what: String, schema: SchemaRef, piece: Piece) -> ClientResult<Columns> {
    let rows = piece.rows;
    fetch_all(&what, &schema, rows, vec![piece]).await
}
