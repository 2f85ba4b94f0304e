//! Streams of IPC record batches received straight into one contiguous buffer per column.
//!
//! A sender that knows how many rows it will send says so in its schema's metadata
//! ([`ROWS_KEY`]). The receiver then allocates every column once and copies each message's
//! values into their rows as the message arrives: no batch objects, no realignment of
//! unaligned message bodies, no concatenation after receipt. The received columns are one
//! batch whose buffers are aligned, contiguous and owned.
//!
//! * [`Landing`] receives one stream; the rows it announced are a hint (fewer or more work).
//! * [`Destination`] is cut into [`Part`]s of fixed row ranges, one per stream, that are
//!   filled concurrently (the endpoints of a parallel get).
//!
//! Only columns whose rows are fixed-width values can land this way: primitive arrays and
//! fixed-size lists of them (every tensor arrowbridge sends). `new` returns `None` for other
//! schemas, and the caller decodes their messages as usual.
//!
//! ```
//! use std::sync::Arc;
//! use arrow_array::{Array, Float64Array, RecordBatch};
//! use arrow_ipc::writer::{IpcDataGenerator, IpcWriteOptions, DictionaryTracker};
//! use arrow_schema::{DataType, Field, Schema};
//! use arrowbridge::landing::{announcing, Destination};
//!
//! // The sender's schema says that 5 rows will follow.
//! let schema = Arc::new(announcing(&Schema::new(vec![Field::new("x", DataType::Float64, false)]), 5));
//! let mut destination = Destination::new("example", schema.clone(), 5)?.expect("fixed width");
//! // Two messages of 3 and 2 rows, as a sender splits them.
//! let values = Float64Array::from(vec![1.0, 2.0, 3.0, 4.0, 5.0]);
//! let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(values)]).unwrap();
//! let (generator, options) = (IpcDataGenerator::default(), IpcWriteOptions::default());
//! let mut parts = destination.parts(&[5])?;
//! for slice in [batch.slice(0, 3), batch.slice(3, 2)] {
//!     let mut tracker = DictionaryTracker::new(false);
//!     let (_, message) = generator.encode(&slice, &mut tracker, &options, &mut Default::default()).unwrap();
//!     parts[0].fill(&message.ipc_message, &message.arrow_data)?;
//! }
//! parts.pop().unwrap().finish()?;
//! let received = destination.into_batch()?;
//! assert_eq!(received.column(0).as_ref(), &Float64Array::from(vec![1.0, 2.0, 3.0, 4.0, 5.0]) as &dyn Array);
//! # Ok::<(), arrowbridge::Error>(())
//! ```

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow_array::{make_array, ArrayRef, RecordBatch, RecordBatchOptions};
use arrow_buffer::{Buffer, MutableBuffer};
use arrow_data::ArrayData;
use arrow_schema::{DataType, Schema, SchemaRef};

use crate::error::{Error, Result};

/// Schema metadata key: how many rows the stream that this schema begins carries.
pub const ROWS_KEY: &str = "arrowbridge.rows";

/// The rows a schema announces ([`ROWS_KEY`]), if it does: all of them, or the first
/// batch's of a stream that may bring more ([`announcing_at_least`]).
pub fn announced_rows(schema: &Schema) -> Option<usize> {
    let value = schema.metadata().get(ROWS_KEY)?;
    value.strip_suffix('+').unwrap_or(value).parse().ok()
}

/// Whether a schema announces the rows of a stream's first batch, more maybe to follow
/// ([`announcing_at_least`]).
pub fn announces_more_rows(schema: &Schema) -> bool {
    schema
        .metadata()
        .get(ROWS_KEY)
        .is_some_and(|v| v.ends_with('+'))
}

/// `schema` beginning a stream of at least `rows` rows, those of its first batch (a
/// streamed put of tensors): [`ROWS_KEY`] is `"{rows}+"`. A receiver that does not know the
/// form reads no announcement.
pub fn announcing_at_least(schema: &Schema, rows: usize) -> Schema {
    let mut metadata = schema.metadata().clone();
    metadata.insert(ROWS_KEY.to_string(), format!("{rows}+"));
    schema.clone().with_metadata(metadata)
}

/// The value of [`ROWS_KEY`] for a stream whose rows are not known when it begins (a
/// streamed put): a receiver lands it message by message ([`Bodies`]).
pub const STREAMED: &str = "stream";

/// Whether a schema begins a stream of rows not known in advance ([`STREAMED`]).
pub fn announces_a_stream(schema: &Schema) -> bool {
    schema.metadata().get(ROWS_KEY).map(String::as_str) == Some(STREAMED)
}

/// `schema` beginning a stream of rows not known in advance ([`STREAMED`]).
pub fn announcing_a_stream(schema: &Schema) -> Schema {
    let mut metadata = schema.metadata().clone();
    metadata.insert(ROWS_KEY.to_string(), STREAMED.to_string());
    schema.clone().with_metadata(metadata)
}

/// How one column's rows are laid out: `values` values of `width` bytes per row.
#[derive(Clone, Copy, Debug)]
struct Layout {
    /// Values per row: 1 for a primitive column, the list size for a fixed-size list.
    values: usize,
    /// Bytes per value.
    width: usize,
    /// Whether the column is a fixed-size list (two field nodes instead of one).
    list: bool,
}

impl Layout {
    fn of(data_type: &DataType) -> Option<Self> {
        let primitive = |t: &DataType| t.is_primitive().then(|| t.primitive_width()).flatten();
        match data_type {
            DataType::FixedSizeList(child, size) => Some(Layout {
                values: usize::try_from(*size).ok()?,
                width: primitive(child.data_type())?,
                list: true,
            }),
            other => Some(Layout {
                values: 1,
                width: primitive(other)?,
                list: false,
            }),
        }
    }

    fn row_bytes(&self) -> Option<usize> {
        self.values.checked_mul(self.width)
    }
}

/// The columns of a stream being received: one aligned buffer per column, allocated once.
#[derive(Debug)]
pub struct Destination {
    what: String,
    schema: SchemaRef,
    rows: usize,
    layouts: Vec<Layout>,
    /// Uninitialized until filled: read only once every row was written (`filled`).
    buffers: Vec<MutableBuffer>,
    /// Rows written by finished parts.
    filled: AtomicUsize,
}

/// A buffer of `len` bytes that the caller writes before anything reads them.
///
/// Not zeroed: zeroing would touch every page once more than the copy that fills it
/// (aligned allocations are zeroed by a memset, not by the kernel's zero pages). Under
/// transparent huge pages where the kernel offers them: the first touch of each page as
/// messages land is a page fault, 65,536 of them for 256 MiB of 4 KiB pages.
fn uninitialized(len: usize) -> MutableBuffer {
    let mut buffer = MutableBuffer::with_capacity(len);
    // SAFETY: the capacity is at least `len`; the bytes are written before they are read:
    // parts write every row they cover, and `into_batch` refuses a destination whose rows
    // were not all written by finished parts.
    unsafe { buffer.set_len(len) };
    crate::ipc::advise_huge_pages(buffer.as_slice_mut());
    buffer
}

impl Destination {
    /// The destination of `rows` rows of `schema`, or `None` when a column's rows are not
    /// fixed-width values (the caller decodes such streams instead). `what` names the
    /// stream in errors. Fails when the columns would not fit in memory.
    pub fn new(what: &str, schema: SchemaRef, rows: usize) -> Result<Option<Self>> {
        let Some(layouts) = layouts_of(&schema) else {
            return Ok(None);
        };
        let sizes = sizes(what, &layouts, rows)?;
        let buffers = sizes.into_iter().map(uninitialized).collect();
        Ok(Some(Destination {
            what: what.to_string(),
            schema,
            rows,
            layouts,
            buffers,
            filled: AtomicUsize::new(0),
        }))
    }

    /// The schema the stream began with.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows in all.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The destination cut into consecutive parts of `counts` rows each (which must add up
    /// to [`rows`](Self::rows)), one per stream that fills it: streams fetched in parallel
    /// land in their own rows of the same buffers.
    pub fn parts(&mut self, counts: &[usize]) -> Result<Vec<Part<'_>>> {
        let sum = counts.iter().try_fold(0usize, |a, &n| a.checked_add(n));
        if sum != Some(self.rows) {
            return Err(Error::invalid(
                &self.what,
                format!(
                    "parts of {counts:?} rows do not add up to the {} rows announced",
                    self.rows
                ),
            ));
        }
        let mut remaining: Vec<&mut [u8]> =
            self.buffers.iter_mut().map(|b| b.as_slice_mut()).collect();
        let mut parts = Vec::with_capacity(counts.len());
        let mut start = 0;
        for &count in counts {
            let mut columns = Vec::with_capacity(remaining.len());
            for (slot, layout) in remaining.iter_mut().zip(&self.layouts) {
                let bytes = count * layout.row_bytes().expect("checked in new");
                let (head, tail) = std::mem::take(slot).split_at_mut(bytes);
                columns.push(head);
                *slot = tail;
            }
            parts.push(Part {
                finished: &self.filled,
                what: &self.what,
                schema: &self.schema,
                layouts: &self.layouts,
                rows: start..start + count,
                filled: 0,
                columns,
            });
            start += count;
        }
        Ok(parts)
    }

    /// The received columns as one record batch, once every part is finished.
    pub fn into_batch(self) -> Result<RecordBatch> {
        let filled = self.filled.load(Ordering::Acquire);
        if filled != self.rows {
            return Err(Error::BadFile {
                path: self.what,
                message: format!("{filled} of the {} rows announced were received", self.rows),
            });
        }
        let buffers = self.buffers.into_iter().map(Buffer::from).collect();
        batch_of(self.schema, &self.layouts, buffers, self.rows)
    }
}

/// A record-batch message being received into a [`Sink`] ([`Sink::begin`]): its rows, and
/// where each column's values lie in its body.
#[derive(Debug)]
pub struct Incoming {
    rows: usize,
    values: Vec<Range<usize>>,
}

/// Consecutive rows of a [`Destination`], filled by the record-batch messages of one stream.
#[derive(Debug)]
pub struct Part<'a> {
    finished: &'a AtomicUsize,
    what: &'a str,
    schema: &'a Schema,
    layouts: &'a [Layout],
    rows: Range<usize>,
    filled: usize,
    columns: Vec<&'a mut [u8]>,
}

impl Part<'_> {
    /// The rows of the destination this part fills.
    pub fn rows(&self) -> Range<usize> {
        self.rows.clone()
    }

    /// Copies the values of one record-batch message (`metadata` is its flatbuffer, `body`
    /// its body) into the next rows; more rows than the part has are an error. Messages that
    /// are not record batches are ignored.
    ///
    /// The message must have passed [`crate::ipc::check_message`] against the schema; each
    /// column must be uncompressed and without nulls, and its values buffer must hold the
    /// batch's rows.
    pub fn fill(&mut self, metadata: &[u8], body: &[u8]) -> Result<()> {
        let Some((rows, values)) =
            message_values(self.what, self.schema, self.layouts, metadata, body)?
        else {
            return Ok(());
        };
        self.check_room(rows)?;
        for ((column, layout), source) in self.columns.iter_mut().zip(self.layouts).zip(values) {
            let at = self.filled * layout.row_bytes().expect("checked in new");
            column[at..at + source.len()].copy_from_slice(source);
        }
        self.filled += rows;
        Ok(())
    }

    fn check_room(&self, rows: usize) -> Result<()> {
        if rows > self.rows.len() - self.filled {
            return Err(Error::BadFile {
                path: self.what.to_string(),
                message: format!(
                    "a record batch of {rows} rows at row {} overflows the {} rows announced",
                    self.rows.start + self.filled,
                    self.rows.len()
                ),
            });
        }
        Ok(())
    }

    /// Forgets the rows received so far, for the part to be filled again from the start
    /// (by another replica, after a stream broke off).
    pub fn rewind(&mut self) {
        self.filled = 0;
    }

    /// Checks that every row of the part arrived.
    pub fn finish(self) -> Result<()> {
        if self.filled != self.rows.len() {
            return Err(Error::BadFile {
                path: self.what.to_string(),
                message: format!(
                    "the stream ended after {} of the {} rows it announced",
                    self.filled,
                    self.rows.len()
                ),
            });
        }
        self.finished.fetch_add(self.filled, Ordering::Release);
        Ok(())
    }
}

/// Where the record-batch messages of a stream land as their bodies arrive, without a copy of
/// any whole message: [`Part`] (rows of a [`Destination`]) or [`Landing`] (a stream of its
/// own). A message is [`begin`](Sink::begin)n once its header came, its body is
/// [`write`](Sink::write)n piece by piece as it arrives, and it counts once
/// [`commit`](Sink::commit)ted.
pub trait Sink {
    /// Starts a record-batch message whose body (`body_len` bytes) is still to arrive; `None`
    /// for messages that are not record batches.
    ///
    /// The message must have passed [`crate::ipc::check_message_header`] against the schema;
    /// each column must be uncompressed and without nulls, and its values buffer must hold the
    /// batch's rows.
    fn begin(&mut self, metadata: &[u8], body_len: usize) -> Result<Option<Incoming>>;

    /// Copies the bytes `bytes`, found at offset `at` of the body of `incoming`'s message,
    /// where they belong: the parts of them that are a column's values go to that column's
    /// rows, the rest (padding, validity buffers) is skipped.
    fn write(&mut self, incoming: &Incoming, at: usize, bytes: &[u8]);

    /// Counts the rows of a message whose whole body was [`write`](Sink::write)n.
    fn commit(&mut self, incoming: Incoming);

    /// Where the body bytes from offset `at` of `incoming`'s message belong, when they are a
    /// column's values: the destination of the first of them and of as many that follow
    /// (at most `len`) as are values of the same column. The caller may put the bytes there
    /// itself (a socket read straight into the destination) instead of passing them to
    /// [`write`](Sink::write). `None` where the bytes at `at` are skipped (padding,
    /// validity buffers), or where the sink takes bytes only through `write`.
    fn values_at(&mut self, incoming: &Incoming, at: usize, len: usize) -> Option<&mut [u8]> {
        let _ = (incoming, at, len);
        None
    }
}

/// Copies the part of `bytes` (at offset `at` of a message's body) that falls in `values` (a
/// column's values in that body) to `column`, whose first byte is the values' first.
fn write_values(column: &mut [u8], values: &Range<usize>, at: usize, bytes: &[u8]) {
    let end = at + bytes.len();
    let (from, to) = (at.max(values.start), end.min(values.end));
    if from < to {
        let dest = from - values.start;
        column[dest..dest + (to - from)].copy_from_slice(&bytes[from - at..to - at]);
    }
}

impl Sink for Part<'_> {
    fn begin(&mut self, metadata: &[u8], body_len: usize) -> Result<Option<Incoming>> {
        let Some((rows, values)) =
            message_ranges(self.what, self.schema, self.layouts, metadata, body_len)?
        else {
            return Ok(None);
        };
        self.check_room(rows)?;
        Ok(Some(Incoming { rows, values }))
    }

    fn write(&mut self, incoming: &Incoming, at: usize, bytes: &[u8]) {
        for ((column, layout), values) in self
            .columns
            .iter_mut()
            .zip(self.layouts)
            .zip(&incoming.values)
        {
            let row0 = self.filled * layout.row_bytes().expect("checked in new");
            write_values(&mut column[row0..], values, at, bytes);
        }
    }

    fn commit(&mut self, incoming: Incoming) {
        self.filled += incoming.rows;
    }

    fn values_at(&mut self, incoming: &Incoming, at: usize, len: usize) -> Option<&mut [u8]> {
        let (index, values) =
            (incoming.values.iter().enumerate()).find(|(_, v)| v.contains(&at))?;
        let row0 = self.filled * self.layouts[index].row_bytes().expect("checked in new");
        let start = row0 + (at - values.start);
        let len = len.min(values.end - at);
        Some(&mut self.columns[index][start..start + len])
    }
}

/// The rows of a message, and where each column's values lie in its body.
type MessageRanges = (usize, Vec<Range<usize>>);

/// The rows of a message, and the bytes of each column's values in it.
type MessageValues<'b> = (usize, Vec<&'b [u8]>);

/// The rows of one record-batch message whose body has `body_len` bytes and, per column,
/// the range of its values in the body; `None` for messages that are not record batches.
///
/// The message must have passed [`crate::ipc::check_message`] (or
/// [`crate::ipc::check_message_header`]) against the schema: its buffers lie inside the
/// body. Here each column must be uncompressed and without nulls, its field nodes must say
/// the batch's rows, and its values buffer must hold them.
fn message_ranges(
    what: &str,
    schema: &Schema,
    layouts: &[Layout],
    metadata: &[u8],
    body_len: usize,
) -> Result<Option<MessageRanges>> {
    let bad = |message: String| Error::BadFile {
        path: what.to_string(),
        message,
    };
    let message =
        arrow_ipc::root_as_message(metadata).map_err(|e| bad(format!("corrupt message: {e}")))?;
    let Some(batch) = message.header_as_record_batch() else {
        return Ok(None);
    };
    if batch.compression().is_some() {
        return Err(bad(
            "a stream that announces its rows must not compress its buffers".into(),
        ));
    }
    let rows = usize::try_from(batch.length())
        .map_err(|_| bad(format!("a record batch of {} rows", batch.length())))?;
    let (Some(nodes), Some(buffers)) = (batch.nodes(), batch.buffers()) else {
        return Err(bad("a record batch without field nodes or buffers".into()));
    };
    let mut nodes = nodes.iter();
    let mut buffers = buffers.iter();
    let mut columns = Vec::with_capacity(layouts.len());
    for (field, layout) in schema.fields().iter().zip(layouts) {
        let mut node = |expected: usize| -> Result<()> {
            let node = nodes
                .next()
                .ok_or_else(|| bad(format!("column {:?}: missing field node", field.name())))?;
            if node.null_count() != 0 {
                return Err(Error::Nulls {
                    what: format!("{what}: column {:?}", field.name()),
                    count: usize::try_from(node.null_count()).unwrap_or(0),
                });
            }
            if usize::try_from(node.length()).ok() != Some(expected) {
                return Err(bad(format!(
                    "column {:?}: a field node of {} values in a batch that needs {expected}",
                    field.name(),
                    node.length()
                )));
            }
            Ok(())
        };
        let values = rows
            .checked_mul(layout.values)
            .ok_or_else(|| bad(format!("a record batch of {rows} rows overflows")))?;
        if layout.list {
            node(rows)?;
            buffers.next(); // the list's validity: no nulls, as its node says
        }
        node(values)?;
        buffers.next(); // the values' validity
        let buffer = buffers
            .next()
            .ok_or_else(|| bad(format!("column {:?}: missing values buffer", field.name())))?;
        let bytes = values.saturating_mul(layout.width);
        // Within the body: check_message saw to that.
        let start = usize::try_from(buffer.offset()).unwrap_or(usize::MAX);
        let source = Some(start..start.saturating_add(bytes))
            .filter(|r| r.end <= body_len)
            .filter(|_| usize::try_from(buffer.length()).is_ok_and(|n| n >= bytes))
            .ok_or_else(|| {
                bad(format!(
                    "column {:?}: a values buffer of {} bytes at body offset {} cannot hold {rows} rows ({bytes} bytes)",
                    field.name(),
                    buffer.length(),
                    buffer.offset()
                ))
            })?;
        columns.push(source);
    }
    Ok(Some((rows, columns)))
}

/// [`message_ranges`] over a body at hand: the bytes of each column's values.
fn message_values<'b>(
    what: &str,
    schema: &Schema,
    layouts: &[Layout],
    metadata: &[u8],
    body: &'b [u8],
) -> Result<Option<MessageValues<'b>>> {
    Ok(message_ranges(what, schema, layouts, metadata, body.len())?
        .map(|(rows, ranges)| (rows, ranges.into_iter().map(|r| &body[r]).collect())))
}

/// One stream received into one buffer per column, allocated for the rows its schema
/// announced. The announcement is a hint, not a contract: a pyarrow table that kept the
/// metadata of the stream it came from may be sliced or extended before it is sent on, so
/// fewer rows are kept as they are and more rows grow the buffers.
#[derive(Debug)]
pub struct Landing {
    what: String,
    schema: SchemaRef,
    layouts: Vec<Layout>,
    buffers: Vec<MutableBuffer>,
    rows: usize,
    /// Whether a message was begun ([`Sink::begin`]) and not committed: its rows are in the
    /// buffers' lengths, not all written yet.
    begun: bool,
}

impl Landing {
    /// A landing for `rows` rows of `schema`, or `None` when a column's rows are not
    /// fixed-width values. Fails when the announced rows would not fit in memory.
    pub fn new(what: &str, schema: SchemaRef, rows: usize) -> Result<Option<Self>> {
        let Some(layouts) = layouts_of(&schema) else {
            return Ok(None);
        };
        let sizes = sizes(what, &layouts, rows)?;
        let buffers = sizes
            .into_iter()
            .map(MutableBuffer::with_capacity)
            .collect();
        Ok(Some(Landing {
            what: what.to_string(),
            schema,
            layouts,
            buffers,
            rows: 0,
            begun: false,
        }))
    }

    /// The bytes set aside for the announced rows.
    pub fn bytes(&self) -> usize {
        self.buffers.iter().map(MutableBuffer::capacity).sum()
    }

    /// The bytes [`set_aside`](Self::set_aside) would hold for `rows` rows.
    pub fn bytes_for(&self, rows: usize) -> Result<usize> {
        let sizes = sizes(&self.what, &self.layouts, rows)?;
        Ok(sizes.iter().sum())
    }

    /// Sets room aside for `rows` rows in all (a stream expected to be that long), so that
    /// the buffers need not grow as they come. Fails when they would not fit in memory.
    pub fn set_aside(&mut self, rows: usize) -> Result<()> {
        let sizes = sizes(&self.what, &self.layouts, rows)?;
        for (buffer, size) in self.buffers.iter_mut().zip(sizes) {
            if size > buffer.capacity() {
                buffer.reserve(size - buffer.len());
            }
        }
        Ok(())
    }

    /// Appends the rows of one record-batch message (the message as for [`Part::fill`]).
    pub fn fill(&mut self, metadata: &[u8], body: &[u8]) -> Result<()> {
        let Some((rows, values)) =
            message_values(&self.what, &self.schema, &self.layouts, metadata, body)?
        else {
            return Ok(());
        };
        self.make_room(values.iter().map(|v| v.len() as u64).sum())?;
        for (buffer, source) in self.buffers.iter_mut().zip(values) {
            buffer.extend_from_slice(source);
        }
        self.rows += rows;
        Ok(())
    }

    /// Checks that `extra` more bytes fit in memory.
    fn make_room(&self, extra: u64) -> Result<()> {
        let spare: u64 = self
            .buffers
            .iter()
            .map(|b| (b.capacity() - b.len()) as u64)
            .sum();
        if extra > spare {
            // More rows than announced: the buffers grow (doubling, as a Vec does).
            let held: u64 = self.buffers.iter().map(|b| b.len() as u64).sum();
            crate::memory::check_allocation(
                &self.what,
                held.saturating_add(extra).saturating_mul(2),
            )?;
        }
        Ok(())
    }

    /// The received rows as one record batch.
    pub fn into_batch(self) -> Result<RecordBatch> {
        if self.begun {
            return Err(Error::BadFile {
                path: self.what,
                message: "the stream ended inside a record batch".into(),
            });
        }
        let buffers = self
            .buffers
            .into_iter()
            .map(|mut b| {
                // Fewer rows than announced or set aside, or room a growing stream did not
                // use: given back (under arrowbridge_pyo3::Recycling a large block shrinks
                // where it lies, copying nothing).
                b.shrink_to_fit();
                Buffer::from(b)
            })
            .collect();
        batch_of(self.schema, &self.layouts, buffers, self.rows)
    }
}

impl Sink for Landing {
    fn begin(&mut self, metadata: &[u8], body_len: usize) -> Result<Option<Incoming>> {
        let Some((rows, values)) =
            message_ranges(&self.what, &self.schema, &self.layouts, metadata, body_len)?
        else {
            return Ok(None);
        };
        self.make_room(values.iter().map(|v| v.len() as u64).sum())?;
        for (buffer, values) in self.buffers.iter_mut().zip(&values) {
            let len = buffer.len();
            buffer.reserve(values.len());
            // SAFETY: the capacity holds the new length; the new bytes are written (`write`
            // covers the whole body, and each column's values lie in it) before anything can
            // read them: `into_batch` refuses a landing with a message begun and not committed.
            unsafe { buffer.set_len(len + values.len()) };
        }
        self.begun = true;
        Ok(Some(Incoming { rows, values }))
    }

    fn write(&mut self, incoming: &Incoming, at: usize, bytes: &[u8]) {
        for (buffer, values) in self.buffers.iter_mut().zip(&incoming.values) {
            // The message's rows are the last `values.len()` bytes of the buffer (`begin`).
            let start = buffer.len() - values.len();
            write_values(&mut buffer.as_slice_mut()[start..], values, at, bytes);
        }
    }

    fn commit(&mut self, incoming: Incoming) {
        self.rows += incoming.rows;
        self.begun = false;
    }
}

/// A stream of record batches of any columns arrowbridge reads (ragged data included), each
/// message's body landed as it arrives, at a 64-byte boundary, in blocks that grow to
/// [`BODIES_BLOCK`] bytes, and decoded there by arrow-ipc at the end: one copy of every byte,
/// as a [`Landing`] makes, where a decoder that gathers whole messages first (tonic's) makes
/// one, and arrow-ipc a second to realign the unaligned bodies it is given. Blocks that large
/// are recycled by the allocator ([`arrowbridge_pyo3::Recycling`]'s pool, in the extension),
/// so the next stream of that size lands in pages already faulted in. For columns that
/// cannot land in one buffer per column.
///
/// [`arrowbridge_pyo3::Recycling`]: https://docs.rs/arrowbridge-pyo3
#[derive(Debug)]
pub struct Bodies {
    what: String,
    schema: SchemaRef,
    blocks: Vec<MutableBuffer>,
    /// Each record batch received: its flatbuffer, its block and where its body lies in it.
    messages: Vec<(Vec<u8>, usize, Range<usize>)>,
    /// The message begun ([`Sink::begin`]) and not committed yet, as `messages` holds them.
    open: Option<(Vec<u8>, usize, Range<usize>)>,
    bytes: usize,
}

/// The largest block [`Bodies`] lands message bodies in (the first is the size of the first
/// body; each next one twice the last, or the body's size when that is more).
pub const BODIES_BLOCK: usize = 256 << 20;

impl Bodies {
    /// An empty stream of `schema`'s batches; `what` names it in errors.
    pub fn new(what: &str, schema: SchemaRef) -> Self {
        Bodies {
            what: what.to_string(),
            schema,
            blocks: Vec::new(),
            messages: Vec::new(),
            open: None,
            bytes: 0,
        }
    }

    /// The body bytes of the batches received so far.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The received batches, each a view of its message's body.
    pub fn into_batches(self) -> Result<Vec<RecordBatch>> {
        let Bodies {
            what,
            schema,
            blocks,
            messages,
            open,
            ..
        } = self;
        if open.is_some() {
            return Err(Error::BadFile {
                path: what,
                message: "the stream ended inside a record batch".into(),
            });
        }
        let blocks: Vec<Buffer> = blocks.into_iter().map(Buffer::from).collect();
        let mut batches = Vec::with_capacity(messages.len());
        for (index, (header, block, body)) in messages.into_iter().enumerate() {
            let bad = |message: String| Error::BadFile {
                path: what.clone(),
                message: format!("record batch {index}: {message}"),
            };
            let body = blocks[block].slice_with_length(body.start, body.len());
            let decode = || -> Result<RecordBatch> {
                let message = arrow_ipc::root_as_message(&header)
                    .map_err(|e| bad(format!("corrupt message: {e}")))?;
                let batch = message
                    .header_as_record_batch()
                    .ok_or_else(|| bad("not a record batch".into()))?;
                arrow_ipc::reader::read_record_batch(
                    &body,
                    batch,
                    schema.clone(),
                    &Default::default(),
                    None,
                    &message.version(),
                )
                .map_err(|e| bad(format!("bad Arrow data: {e}")))
            };
            // The message was checked (`crate::ipc::check_message_header`) before it began;
            // a panic that gets through anyway is an error.
            let batch = std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode))
                .unwrap_or_else(|_| Err(bad("arrow-ipc could not decode it".into())))?;
            batches.push(batch);
        }
        Ok(batches)
    }

    /// Room for a body of `len` bytes at the end of the last block, or in a new one: the
    /// block and where the body lies in it.
    fn room(&mut self, len: usize) -> Result<(usize, Range<usize>)> {
        if let Some(last) = self.blocks.last_mut() {
            let start = last.len().next_multiple_of(ALIGNMENT);
            if start
                .checked_add(len)
                .is_some_and(|end| end <= last.capacity())
            {
                // Zero padding up to the body: every byte of a block is written.
                last.resize(start, 0);
                return Ok((self.blocks.len() - 1, start..start + len));
            }
        }
        let grown = self
            .blocks
            .last()
            .map_or(0, |b| b.capacity().saturating_mul(2).min(BODIES_BLOCK));
        let capacity = len.max(grown);
        let mut block = MutableBuffer::new(0);
        block
            .try_reserve(capacity)
            .map_err(|e| Error::OutOfMemory {
                what: self.what.clone(),
                bytes: capacity as u64,
                reason: e.to_string(),
            })?;
        self.blocks.push(block);
        Ok((self.blocks.len() - 1, 0..len))
    }
}

/// Where [`Bodies`] puts each body in its block.
const ALIGNMENT: usize = 64;

impl Sink for Bodies {
    fn begin(&mut self, metadata: &[u8], body_len: usize) -> Result<Option<Incoming>> {
        let message = arrow_ipc::root_as_message(metadata).map_err(|e| Error::BadFile {
            path: self.what.clone(),
            message: format!("corrupt message: {e}"),
        })?;
        let Some(batch) = message.header_as_record_batch() else {
            return Ok(None);
        };
        let rows = usize::try_from(batch.length()).map_err(|_| Error::BadFile {
            path: self.what.clone(),
            message: format!("a record batch of {} rows", batch.length()),
        })?;
        let (block, body) = self.room(body_len)?;
        // SAFETY: `room` made the capacity hold the body; every byte of it is written
        // (`write` covers the whole body) before anything reads it: `into_batches` refuses a
        // stream with a message begun and not committed.
        unsafe { self.blocks[block].set_len(body.end) };
        self.open = Some((metadata.to_vec(), block, body));
        // The whole body is the message's one range of values.
        let whole = std::iter::once(0..body_len).collect();
        Ok(Some(Incoming {
            rows,
            values: whole,
        }))
    }

    fn write(&mut self, incoming: &Incoming, at: usize, bytes: &[u8]) {
        if let Some((_, block, body)) = &self.open {
            let landed = &mut self.blocks[*block].as_slice_mut()[body.clone()];
            write_values(landed, &incoming.values[0], at, bytes);
        }
    }

    fn values_at(&mut self, incoming: &Incoming, at: usize, len: usize) -> Option<&mut [u8]> {
        let (_, block, body) = self.open.as_ref()?;
        let end = incoming.values[0].end;
        let landed = &mut self.blocks[*block].as_slice_mut()[body.clone()];
        (at < end).then(|| &mut landed[at..at + len.min(end - at)])
    }

    fn commit(&mut self, _incoming: Incoming) {
        if let Some(open) = self.open.take() {
            self.bytes = self.bytes.saturating_add(open.2.len());
            self.messages.push(open);
        }
    }
}

/// Whether a stream of `schema`'s batches can land message by message in [`Bodies`]: every
/// column holds tensors (fixed-width rows) or ragged tensors (`arrow.variable_shape_tensor`),
/// which need no dictionary messages. A receiver that does not know the rows, or whose
/// columns are ragged, lands such a stream there instead of decoding gathered messages.
pub fn lands_in_bodies(schema: &Schema) -> bool {
    schema
        .fields()
        .iter()
        .all(|f| crate::ragged::is_ragged_field(f) || Layout::of(f.data_type()).is_some())
}

/// The bytes of one row of each column of `schema`, or `None` when a column's rows are not
/// fixed-width values (primitive values, or fixed-size lists of them).
pub fn row_bytes(schema: &Schema) -> Option<Vec<usize>> {
    layouts_of(schema)?.iter().map(Layout::row_bytes).collect()
}

/// One record batch of `rows` rows of `schema` over the values `buffers` of its columns
/// (one per column, each exactly `rows` × its [`row_bytes`]).
pub fn batch_over(schema: SchemaRef, buffers: Vec<Buffer>, rows: usize) -> Result<RecordBatch> {
    let layouts = layouts_of(&schema).ok_or_else(|| {
        Error::invalid("batch_over", "a column's rows are not fixed-width values")
    })?;
    if buffers.len() != layouts.len() {
        return Err(Error::invalid("batch_over", "one buffer per column"));
    }
    for ((field, layout), buffer) in schema.fields().iter().zip(&layouts).zip(&buffers) {
        if Some(buffer.len()) != layout.row_bytes().and_then(|b| b.checked_mul(rows)) {
            return Err(Error::invalid(
                format!("column {:?}", field.name()),
                format!("{} bytes do not hold {rows} rows", buffer.len()),
            ));
        }
    }
    batch_of(schema, &layouts, buffers, rows)
}

fn layouts_of(schema: &Schema) -> Option<Vec<Layout>> {
    schema
        .fields()
        .iter()
        .map(|f| Layout::of(f.data_type()))
        .collect()
}

/// The bytes of every column for `rows` rows, checked against what may be allocated.
fn sizes(what: &str, layouts: &[Layout], rows: usize) -> Result<Vec<usize>> {
    let sizes = layouts
        .iter()
        .map(|l| l.row_bytes().and_then(|b| b.checked_mul(rows)))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::invalid(what, format!("{rows} rows overflow the address space")))?;
    let total = sizes
        .iter()
        .try_fold(0u64, |acc, &n| acc.checked_add(n as u64));
    crate::memory::check_allocation(what, total.unwrap_or(u64::MAX))?;
    Ok(sizes)
}

/// One record batch of `rows` rows over the column `buffers` of `schema`.
fn batch_of(
    schema: SchemaRef,
    layouts: &[Layout],
    buffers: Vec<Buffer>,
    rows: usize,
) -> Result<RecordBatch> {
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(buffers.len());
    for ((field, layout), buffer) in schema.fields().iter().zip(layouts).zip(buffers) {
        let values = buffer;
        let data = match field.data_type() {
            DataType::FixedSizeList(child, _) => {
                let child = ArrayData::builder(child.data_type().clone())
                    .len(rows * layout.values)
                    .add_buffer(values)
                    .build()?;
                ArrayData::builder(field.data_type().clone())
                    .len(rows)
                    .add_child_data(child)
                    .build()?
            }
            other => ArrayData::builder(other.clone())
                .len(rows)
                .add_buffer(values)
                .build()?,
        };
        arrays.push(make_array(data));
    }
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(schema, arrays, &options)?)
}

/// `schema` with [`ROWS_KEY`] set to `rows`.
pub fn announcing(schema: &Schema, rows: usize) -> Schema {
    let mut metadata = schema.metadata().clone();
    metadata.insert(ROWS_KEY.to_string(), rows.to_string());
    schema.clone().with_metadata(metadata)
}

/// `schema` without [`ROWS_KEY`] (what a stored item's schema says, whatever stream brought it).
pub fn unannounced(schema: &Schema) -> Schema {
    let mut metadata = schema.metadata().clone();
    metadata.remove(ROWS_KEY);
    schema.clone().with_metadata(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, FixedSizeListArray, Float32Array, Int64Array};
    use arrow_ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteOptions};
    use arrow_schema::Field;
    use std::sync::Arc;

    fn encode(batch: &RecordBatch) -> (Vec<u8>, Vec<u8>) {
        let mut tracker = DictionaryTracker::new(false);
        let (_, m) = IpcDataGenerator::default()
            .encode(
                batch,
                &mut tracker,
                &IpcWriteOptions::default(),
                &mut Default::default(),
            )
            .unwrap();
        (m.ipc_message, m.arrow_data)
    }

    fn table(rows: usize) -> RecordBatch {
        let ids = Int64Array::from_iter_values(0..rows as i64);
        let values = Float32Array::from_iter_values((0..rows * 3).map(|v| v as f32));
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let vectors = FixedSizeListArray::new(item, 3, Arc::new(values), None);
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", vectors.data_type().clone(), false),
        ]);
        RecordBatch::try_new(
            Arc::new(announcing(&schema, rows)),
            vec![Arc::new(ids), Arc::new(vectors)],
        )
        .unwrap()
    }

    /// A ragged column (`arrow.variable_shape_tensor`) of `rows` rows of 0.. float32 pairs.
    fn ragged(rows: usize) -> RecordBatch {
        let arrays: Vec<ndarray::ArrayD<f32>> = (0..rows)
            .map(|i| ndarray::ArrayD::from_elem(ndarray::IxDyn(&[i % 5, 2]), i as f32))
            .collect();
        let ragged = crate::RaggedTensor::from_arrays(arrays).unwrap();
        let schema = Schema::new(vec![ragged.field("img")]);
        RecordBatch::try_new(Arc::new(schema), vec![ragged.array()]).unwrap()
    }

    #[test]
    fn bodies_land_any_columns_a_message_at_a_time_in_shared_aligned_blocks() {
        let sent = ragged(40);
        // The first body sizes the first block; the next two share the second (twice that).
        let slices = [
            sent.slice(0, 30),
            sent.slice(30, 0),
            sent.slice(30, 4),
            sent.slice(34, 6),
        ];
        for piece in [1, 13, 1 << 20] {
            let mut bodies = Bodies::new("t", sent.schema());
            for slice in &slices {
                let (meta, body) = encode(slice);
                crate::ipc::check_message_header("t", &meta, body.len(), Some(&sent.schema()))
                    .unwrap();
                let incoming = bodies.begin(&meta, body.len()).unwrap().unwrap();
                for (i, chunk) in body.chunks(piece).enumerate() {
                    bodies.write(&incoming, i * piece, chunk);
                }
                bodies.commit(incoming);
            }
            let got = bodies.into_batches().unwrap();
            assert_eq!(got, slices, "pieces of {piece} bytes");
            // Each body starts at a 64-byte boundary of a block (its list offsets come
            // first), and a block holds the bodies that fit.
            let offsets: Vec<Buffer> = [&got[0], &got[2], &got[3]]
                .iter()
                .map(|b| b.column(0).to_data().child_data()[0].buffers()[0].clone())
                .collect();
            assert!(offsets
                .iter()
                .all(|o| (o.as_ptr() as usize).is_multiple_of(64)));
            assert_ne!(offsets[0].data_ptr(), offsets[1].data_ptr());
            assert_eq!(offsets[1].data_ptr(), offsets[2].data_ptr(), "one block");
        }
    }

    #[test]
    fn bodies_ended_inside_a_message_are_an_error() {
        let sent = ragged(4);
        let (meta, body) = encode(&sent);
        let mut bodies = Bodies::new("t", sent.schema());
        let incoming = bodies.begin(&meta, body.len()).unwrap().unwrap();
        bodies.write(&incoming, 0, &body[..body.len() / 2]);
        let error = bodies.into_batches().unwrap_err().to_string();
        assert!(error.contains("inside a record batch"), "{error}");
    }

    #[test]
    fn parts_filled_in_any_order_make_the_batch_that_was_sent() {
        let sent = table(10);
        let mut destination = Destination::new("t", sent.schema(), 10).unwrap().unwrap();
        let mut parts = destination.parts(&[4, 6]).unwrap();
        // The second part's stream arrives first, in two messages.
        for slice in [sent.slice(4, 5), sent.slice(9, 1)] {
            let (meta, body) = encode(&slice);
            parts[1].fill(&meta, &body).unwrap();
        }
        let (meta, body) = encode(&sent.slice(0, 4));
        parts[0].fill(&meta, &body).unwrap();
        for part in parts {
            part.finish().unwrap();
        }
        let received = destination.into_batch().unwrap();
        assert_eq!(received, sent);
        let address = received.column(1).to_data().child_data()[0].buffers()[0].as_ptr() as usize;
        assert_eq!(address % 64, 0, "columns land aligned");
    }

    #[test]
    fn bodies_landed_in_pieces_of_any_size_make_the_batch_that_was_sent() {
        let sent = table(10);
        for piece in [1, 7, 64, 1 << 20] {
            let mut destination = Destination::new("t", sent.schema(), 10).unwrap().unwrap();
            let mut parts = destination.parts(&[10]).unwrap();
            for slice in [sent.slice(0, 3), sent.slice(3, 7)] {
                let (meta, body) = encode(&slice);
                crate::ipc::check_message_header("t", &meta, body.len(), Some(&sent.schema()))
                    .unwrap();
                let incoming = parts[0].begin(&meta, body.len()).unwrap().unwrap();
                for (i, chunk) in body.chunks(piece).enumerate() {
                    parts[0].write(&incoming, i * piece, chunk);
                }
                parts[0].commit(incoming);
            }
            parts.pop().unwrap().finish().unwrap();
            assert_eq!(
                destination.into_batch().unwrap(),
                sent,
                "pieces of {piece} bytes"
            );
        }
    }

    #[test]
    fn bodies_put_where_values_at_says_make_the_batch_that_was_sent() {
        // A reader that puts each body byte where `values_at` says, and passes the rest
        // (padding) to `write`, as a socket read straight into the destination does.
        let sent = table(10);
        for piece in [1, 7, 64, 1 << 20] {
            let mut destination = Destination::new("t", sent.schema(), 10).unwrap().unwrap();
            let mut parts = destination.parts(&[10]).unwrap();
            let mut placed = 0;
            for slice in [sent.slice(0, 3), sent.slice(3, 7)] {
                let (meta, body) = encode(&slice);
                let incoming = parts[0].begin(&meta, body.len()).unwrap().unwrap();
                let mut at = 0;
                while at < body.len() {
                    let len = piece.min(body.len() - at);
                    match parts[0].values_at(&incoming, at, len) {
                        Some(slot) => {
                            let n = slot.len();
                            assert!(n > 0 && n <= len);
                            slot.copy_from_slice(&body[at..at + n]);
                            (at, placed) = (at + n, placed + n);
                        }
                        None => {
                            parts[0].write(&incoming, at, &body[at..at + 1]);
                            at += 1;
                        }
                    }
                }
                parts[0].commit(incoming);
            }
            parts.pop().unwrap().finish().unwrap();
            assert_eq!(destination.into_batch().unwrap(), sent, "pieces of {piece}");
            assert_eq!(placed, 10 * (8 + 3 * 4), "every value byte had a place");
        }
    }

    #[test]
    fn a_body_too_short_for_its_rows_is_refused_before_it_arrives() {
        let sent = table(4);
        let mut destination = Destination::new("t", sent.schema(), 4).unwrap().unwrap();
        let mut parts = destination.parts(&[4]).unwrap();
        let (meta, _) = encode(&sent);
        let err = crate::ipc::check_message_header("t", &meta, 16, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("lies outside the message body"), "{err}");
        let err = parts[0].begin(&meta, 8).unwrap_err().to_string();
        assert!(err.contains("cannot hold 4 rows"), "{err}");
    }

    #[test]
    fn missing_and_extra_rows_are_errors_naming_the_counts() {
        let sent = table(5);
        let mut destination = Destination::new("t", sent.schema(), 5).unwrap().unwrap();
        let mut parts = destination.parts(&[5]).unwrap();
        let (meta, body) = encode(&sent.slice(0, 3));
        parts[0].fill(&meta, &body).unwrap();
        let err = parts[0].fill(&meta, &body).unwrap_err().to_string();
        assert!(
            err.contains("a record batch of 3 rows at row 3 overflows the 5 rows"),
            "{err}"
        );
        let err = parts.pop().unwrap().finish().unwrap_err().to_string();
        assert!(err.contains("after 3 of the 5 rows"), "{err}");
    }

    #[test]
    fn a_destination_is_read_only_once_every_part_finished() {
        let sent = table(4);
        let mut destination = Destination::new("t", sent.schema(), 4).unwrap().unwrap();
        let mut parts = destination.parts(&[2, 2]).unwrap();
        let (meta, body) = encode(&sent.slice(0, 2));
        parts[0].fill(&meta, &body).unwrap();
        let first = parts.remove(0);
        first.finish().unwrap();
        drop(parts); // the second part never came
        let err = destination.into_batch().unwrap_err().to_string();
        assert!(
            err.contains("2 of the 4 rows announced were received"),
            "{err}"
        );
    }

    #[test]
    fn a_landing_takes_fewer_or_more_rows_than_announced() {
        let sent = table(6);
        for announced in [2, 6, 50] {
            let mut landing = Landing::new("t", sent.schema(), announced)
                .unwrap()
                .unwrap();
            for slice in [sent.slice(0, 4), sent.slice(4, 2)] {
                let (meta, body) = encode(&slice);
                landing.fill(&meta, &body).unwrap();
            }
            assert_eq!(landing.into_batch().unwrap(), sent, "announced {announced}");
        }
    }

    #[test]
    fn a_landing_takes_bodies_in_pieces_and_fewer_or_more_rows_than_announced() {
        let sent = table(6);
        for (announced, piece) in [(2, 1), (6, 7), (50, 1 << 20)] {
            let mut landing = Landing::new("t", sent.schema(), announced)
                .unwrap()
                .unwrap();
            for slice in [sent.slice(0, 4), sent.slice(4, 2)] {
                let (meta, body) = encode(&slice);
                let incoming = landing.begin(&meta, body.len()).unwrap().unwrap();
                for (i, chunk) in body.chunks(piece).enumerate() {
                    landing.write(&incoming, i * piece, chunk);
                }
                landing.commit(incoming);
            }
            assert_eq!(landing.into_batch().unwrap(), sent, "announced {announced}");
        }
    }

    #[test]
    fn a_landing_with_a_message_begun_and_not_committed_is_not_read() {
        let sent = table(4);
        let mut landing = Landing::new("t", sent.schema(), 4).unwrap().unwrap();
        let (meta, body) = encode(&sent);
        let incoming = landing.begin(&meta, body.len()).unwrap().unwrap();
        landing.write(&incoming, 0, &body[..body.len() / 2]);
        let err = landing.into_batch().unwrap_err().to_string();
        assert!(err.contains("ended inside a record batch"), "{err}");
    }

    #[test]
    fn nulls_are_refused_with_the_column_named() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let with_null = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![Some(1), None]))],
        )
        .unwrap();
        let mut destination = Destination::new("t", schema, 2).unwrap().unwrap();
        let mut parts = destination.parts(&[2]).unwrap();
        let (meta, body) = encode(&with_null);
        let err = parts[0].fill(&meta, &body).unwrap_err();
        assert!(matches!(err, Error::Nulls { count: 1, .. }), "{err}");
        assert!(err.to_string().contains("column \"x\""), "{err}");
    }

    #[test]
    fn columns_that_are_not_fixed_width_are_left_to_the_decoder() {
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, false)]));
        assert!(Destination::new("t", schema, 3).unwrap().is_none());
        let schema = Arc::new(Schema::new(vec![Field::new("b", DataType::Boolean, false)]));
        assert!(Destination::new("t", schema, 3).unwrap().is_none());
    }

    #[test]
    fn a_size_past_memory_is_an_error_before_any_allocation() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, false)]));
        let err = Destination::new("t", schema.clone(), usize::MAX / 4).unwrap_err();
        assert!(
            matches!(err, Error::OutOfMemory { .. } | Error::InvalidData { .. }),
            "{err}"
        );
        let err = Destination::new("t", schema, usize::MAX).unwrap_err();
        assert!(err.to_string().contains("overflow"), "{err}");
    }

    #[test]
    fn large_destinations_ask_for_huge_pages() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            return; // a kernel built without transparent huge pages: no advice to give
        }
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, false)]));
        let destination = Destination::new("t", schema, 1 << 20).unwrap().unwrap();
        let start = destination.buffers[0].as_ptr() as usize;
        let huge = start.next_multiple_of(2 << 20);
        // The smaps entry of the mapping that holds the first 2 MiB-aligned byte.
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut flags = None;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((a, b)) = range.split_once('-') {
                    if let (Ok(a), Ok(b)) =
                        (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                    {
                        inside = (a..b).contains(&huge);
                        continue;
                    }
                }
            }
            if inside {
                if let Some(rest) = line.strip_prefix("VmFlags:") {
                    flags = Some(rest.to_string());
                }
            }
        }
        let flags = flags.expect("the buffer's mapping is in /proc/self/smaps");
        assert!(
            flags.split_whitespace().any(|f| f == "hg"),
            "MADV_HUGEPAGE not set: {flags}"
        );
    }
}
