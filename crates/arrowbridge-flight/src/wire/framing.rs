//! FlightData messages framed by hand, their bodies views of the arrays.
//!
//! arrow-flight's encoder copies the buffers of every record batch into an IPC body, and
//! tonic's encoder copies every message into a buffer of its own: two copies of every byte
//! before the kernel's, all on the sender, which on loopback also runs the receiver's network
//! stack. [`Messages`] is a gRPC body built by hand instead, as a list of [`Bytes`]: per
//! message its gRPC prefix and `FlightData` fields, then views of the columns' own buffers
//! with zero padding between them. hyper hands views of 256 bytes or more to the socket as
//! they are (one vectored write), so the sender copies nothing but into the kernel. The
//! client's puts ([`crate::client::put`]) and the server's DoGet answers
//! ([`crate::server`]) are sent so.
//!
//! Ragged data (`arrow.variable_shape_tensor`: a struct of a list of values and a fixed-size
//! list of shapes) travels so too, its list offsets rebased to zero (a few bytes a row, the
//! only bytes built). Batches whose columns are not plain values without nulls (booleans,
//! strings, nulls) have no such views; [`Messages::new`] says so and the caller uses arrow-flight's
//! encoder.

use std::convert::Infallible;

use arrow_array::{Array, RecordBatch};
use arrow_data::ArrayData;
use arrow_flight::{FlightData, FlightDescriptor};
use arrow_schema::{DataType, Schema};
use bytes::Bytes;
use futures::stream;
use http_body::Frame;
use prost::Message;
use tonic::Status;

use crate::wire::grpc::{self, put_varint};

/// Buffers in a body start at multiples of this many bytes (arrow-rs's IPC writer's default).
const ALIGNMENT: usize = 64;
/// What padding is cut from.
static ZEROS: [u8; ALIGNMENT] = [0; ALIGNMENT];
/// The key of `FlightData.data_body` (field 1000, length-delimited), as a varint.
const BODY_KEY: [u8; 2] = [0xc2, 0x3e];

/// A gRPC body of FlightData messages: its bytes, the large ones views of the arrays.
#[derive(Debug)]
pub(crate) struct Messages {
    chunks: Vec<Bytes>,
}

impl Messages {
    /// The messages of a stream of `batches` under `schema`, the first (the schema's) carrying
    /// `descriptor` if given, each batch cut into messages of at most `max_bytes` (one row
    /// at least); `None` when a column has no views to send ([`plain_body`]).
    pub(crate) fn new(
        descriptor: Option<FlightDescriptor>,
        schema: &Schema,
        batches: &[RecordBatch],
        max_bytes: usize,
        what: &str,
    ) -> Result<Option<Self>, Status> {
        let mut schema_message = crate::wire::schemas::message(schema);
        schema_message.flight_descriptor = descriptor;
        Self::of(Some(schema_message), schema, batches, max_bytes, what)
    }

    /// The messages of `batches` alone, as a stream that already sent its schema goes on
    /// (see [`new`](Self::new)).
    pub(crate) fn batches_only(
        schema: &Schema,
        batches: &[RecordBatch],
        max_bytes: usize,
        what: &str,
    ) -> Result<Option<Self>, Status> {
        Self::of(None, schema, batches, max_bytes, what)
    }

    fn of(
        schema_message: Option<FlightData>,
        schema: &Schema,
        batches: &[RecordBatch],
        max_bytes: usize,
        what: &str,
    ) -> Result<Option<Self>, Status> {
        let Some(bodies) = plain_bodies(schema, batches, max_bytes) else {
            return Ok(None);
        };
        let mut messages = Messages {
            chunks: Vec::with_capacity(1 + 2 * bodies.len()),
        };
        if let Some(schema_message) = schema_message {
            messages.push(&schema_message, Vec::new(), what)?;
        }
        for (rows, body) in bodies {
            let header = FlightData {
                data_header: body.header(rows).into(),
                ..FlightData::default()
            };
            messages.push(&header, body.chunks, what)?;
        }
        Ok(Some(messages))
    }

    /// Appends `data` (without a body) followed by the body `chunks`, as one message.
    fn push(&mut self, data: &FlightData, chunks: Vec<Bytes>, what: &str) -> Result<(), Status> {
        let body: usize = chunks.iter().map(Bytes::len).sum();
        let mut fields = data.encode_to_vec();
        if body > 0 {
            fields.extend_from_slice(&BODY_KEY);
            put_varint(&mut fields, body as u64);
        }
        let len = fields.len() + body;
        if len > crate::wire::MAX_MESSAGE {
            return Err(Status::internal(format!(
                "{what}: a message of {len} bytes, over the {} bytes a server takes",
                crate::wire::MAX_MESSAGE
            )));
        }
        let mut head = Vec::with_capacity(5 + fields.len());
        grpc::prefix(&mut head, len, what)?;
        head.extend_from_slice(&fields);
        self.chunks.push(head.into());
        self.chunks
            .extend(chunks.into_iter().filter(|c| !c.is_empty()));
        Ok(())
    }

    /// The messages as a request or response body; a response's ends with `trailers`. The
    /// body holds `held` (what its views are of) until it is sent or dropped.
    pub(crate) fn into_body<H: Send + 'static>(
        self,
        trailers: Option<http::HeaderMap>,
        held: H,
    ) -> tonic::body::Body {
        let frames = self
            .chunks
            .into_iter()
            .map(Frame::data)
            .chain(trailers.map(Frame::trailers))
            .map(move |frame| {
                let _ = &held;
                Ok::<_, Infallible>(frame)
            });
        tonic::body::Body::new(http_body_util::StreamBody::new(stream::iter(frames)))
    }

    /// The body's bytes, in order: gRPC prefixes and fields, and views of the arrays.
    pub(crate) fn into_chunks(self) -> Vec<Bytes> {
        self.chunks
    }

    /// Every byte of the body, in order (for tests).
    #[cfg(test)]
    fn to_vec(&self) -> Vec<u8> {
        self.chunks.concat()
    }
}

/// The bodies of the messages that carry `batches` under `schema`, each batch cut into
/// slices of at most `max_bytes` (one row at least), with their rows; `None` when a column has
/// no views ([`plain_body`]).
fn plain_bodies(
    schema: &Schema,
    batches: &[RecordBatch],
    max_bytes: usize,
) -> Option<Vec<(usize, PlainBody)>> {
    let Some(row_bytes) = arrowbridge::landing::row_bytes(schema) else {
        return coalesced_bodies(batches, max_bytes);
    };
    let step = arrowbridge::ipc::rows_per_message(row_bytes.iter().sum(), max_bytes);
    let mut bodies = Vec::with_capacity(batches.len());
    for batch in batches {
        let mut start = 0;
        // An empty batch is sent as one empty message, as arrow-flight's encoder does.
        while start < batch.num_rows() || (start == 0 && batch.num_rows() == 0) {
            let rows = step.min(batch.num_rows() - start);
            bodies.push((rows, plain_body(&[batch.slice(start, rows)])?));
            start += rows.max(1);
        }
    }
    Some(bodies)
}

/// The messages of [`Messages::new`] as whole `FlightData`, for senders that take those
/// (tonic's encoder, which copies each into its buffer): a body of one column is a view of
/// it, a body of several is gathered into one buffer.
pub(crate) fn flight_data(
    schema: &Schema,
    batches: &[RecordBatch],
    max_bytes: usize,
) -> Option<Vec<FlightData>> {
    let bodies = plain_bodies(schema, batches, max_bytes)?;
    let mut messages = Vec::with_capacity(1 + bodies.len());
    messages.push(crate::wire::schemas::message(schema));
    for (rows, body) in bodies {
        let header = body.header(rows);
        let mut chunks: Vec<Bytes> = body.chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let data_body = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.remove(0),
            _ => chunks.concat().into(),
        };
        messages.push(FlightData {
            data_header: header.into(),
            data_body,
            ..FlightData::default()
        });
    }
    Some(messages)
}

/// The body of a record batch as views of its columns' buffers, and where each lies in it.
#[derive(Debug, Default)]
struct PlainBody {
    nodes: Vec<arrow_ipc::FieldNode>,
    buffers: Vec<arrow_ipc::Buffer>,
    chunks: Vec<Bytes>,
    len: usize,
}

/// The bodies of the messages that carry the rows of `batches` whose rows differ in size
/// (ragged columns): consecutive rows, across batches, of at most `max_bytes` a message (a
/// larger row alone), so that many small batches (a list put one array a batch) travel in
/// few messages and a large one in several. A message's body gathers views of the batches'
/// buffers; nothing is copied but the list offsets, rebased.
fn coalesced_bodies(batches: &[RecordBatch], max_bytes: usize) -> Option<Vec<(usize, PlainBody)>> {
    let mut bodies = Vec::new();
    // The rows of the message being gathered: slices of the batches, and their bytes.
    let mut pieces: Vec<RecordBatch> = Vec::new();
    let (mut rows, mut bytes) = (0usize, 0usize);
    for batch in batches {
        let mut start = 0;
        for (row, size) in arrowbridge::ipc::row_sizes(batch).into_iter().enumerate() {
            if rows > 0 && bytes.saturating_add(size) > max_bytes {
                if row > start {
                    pieces.push(batch.slice(start, row - start));
                }
                bodies.push((rows, plain_body(&pieces)?));
                pieces.clear();
                (rows, bytes, start) = (0, 0, row);
            }
            rows += 1;
            bytes = bytes.saturating_add(size);
        }
        if batch.num_rows() > start {
            pieces.push(batch.slice(start, batch.num_rows() - start));
        }
    }
    if rows > 0 {
        bodies.push((rows, plain_body(&pieces)?));
    } else if bodies.is_empty() {
        // Batches without rows are sent as one empty message, as arrow-flight's encoder does.
        if let Some(batch) = batches.first() {
            bodies.push((0, plain_body(std::slice::from_ref(batch))?));
        }
    }
    Some(bodies)
}

/// The body of the rows of `pieces` (batches of one schema, one after another) when every
/// column is plain values without nulls (primitive, fixed-size lists of them as tensors
/// travel, ragged tensors): per column, views of each piece's buffers, no copy.
fn plain_body(pieces: &[RecordBatch]) -> Option<PlainBody> {
    let mut body = PlainBody::default();
    for column in 0..pieces.first()?.num_columns() {
        let parts: Vec<ArrayData> = pieces.iter().map(|p| p.column(column).to_data()).collect();
        body.add(&parts)?;
    }
    // A body is a multiple of 8 bytes; a single column of such values needs no padding at all.
    body.pad_to(8);
    Some(body)
}

impl PlainBody {
    /// Adds one column: the values of `parts` (arrays of one type), one after another.
    fn add(&mut self, parts: &[ArrayData]) -> Option<()> {
        let first = parts.first()?;
        if parts.iter().any(|p| p.null_count() != 0) {
            return None;
        }
        let len: usize = parts.iter().map(ArrayData::len).sum();
        self.nodes.push(arrow_ipc::FieldNode::new(len as i64, 0));
        // Validity: none.
        self.buffers
            .push(arrow_ipc::Buffer::new(self.len as i64, 0));
        match first.data_type() {
            DataType::FixedSizeList(_, size) => {
                let size = usize::try_from(*size).ok()?;
                let children = parts
                    .iter()
                    .map(|p| {
                        let child = p.child_data().first()?;
                        Some(child.slice(p.offset() * size, p.len() * size))
                    })
                    .collect::<Option<Vec<_>>>()?;
                self.add(&children)
            }
            t if t.is_primitive() => {
                let width = t.primitive_width()?;
                // Each buffer starts aligned; the padding goes before it.
                self.pad_to(ALIGNMENT);
                let start = self.len;
                for part in parts {
                    let values = part
                        .buffers()
                        .first()?
                        .slice_with_length(part.offset() * width, part.len() * width);
                    self.len += values.len();
                    self.chunks.push(Bytes::from(values));
                }
                self.buffers.push(arrow_ipc::Buffer::new(
                    start as i64,
                    (self.len - start) as i64,
                ));
                Some(())
            }
            // Ragged data (`arrow.variable_shape_tensor`): a struct of the values' list and
            // the shapes' fixed-size list, each child already sliced to the struct's rows.
            DataType::Struct(fields) => {
                for i in 0..fields.len() {
                    let children = parts
                        .iter()
                        .map(|p| {
                            p.child_data()
                                .get(i)
                                .filter(|c| c.len() == p.len())
                                .cloned()
                        })
                        .collect::<Option<Vec<_>>>()?;
                    self.add(&children)?;
                }
                Some(())
            }
            DataType::List(_) => {
                // Offsets that start at zero, as arrow's own writer sends them (a slice's
                // start elsewhere), and go on across the parts: a few bytes a row, the values
                // stay views.
                let mut rebased: Vec<u8> = Vec::with_capacity(4 * (len + 1));
                rebased.extend_from_slice(&0i32.to_le_bytes());
                let mut base = 0i32;
                let mut children = Vec::with_capacity(parts.len());
                for part in parts {
                    let offsets = part.buffers().first()?.typed_data::<i32>();
                    let offsets = offsets.get(part.offset()..=part.offset() + part.len())?;
                    let (first, last) = (*offsets.first()?, *offsets.last()?);
                    for &o in &offsets[1..] {
                        let o = o.checked_sub(first)?.checked_add(base)?;
                        rebased.extend_from_slice(&o.to_le_bytes());
                    }
                    base = base.checked_add(last.checked_sub(first)?)?;
                    let child = part.child_data().first()?;
                    let (start, len) = (
                        usize::try_from(first).ok()?,
                        usize::try_from(last.checked_sub(first)?).ok()?,
                    );
                    if start.checked_add(len)? > child.len() {
                        return None;
                    }
                    children.push(child.slice(start, len));
                }
                self.pad_to(ALIGNMENT);
                self.buffers.push(arrow_ipc::Buffer::new(
                    self.len as i64,
                    rebased.len() as i64,
                ));
                self.len += rebased.len();
                self.chunks.push(Bytes::from(rebased));
                self.add(&children)
            }
            _ => None,
        }
    }

    /// Zero padding up to the next multiple of `alignment`.
    fn pad_to(&mut self, alignment: usize) {
        let padding = self.len.next_multiple_of(alignment) - self.len;
        if padding > 0 {
            self.chunks.push(Bytes::from_static(&ZEROS[..padding]));
            self.len += padding;
        }
    }

    /// The IPC header of a record batch of `rows` rows with this body.
    fn header(&self, rows: usize) -> Vec<u8> {
        let mut fbb = flatbuffers::FlatBufferBuilder::new();
        let nodes = fbb.create_vector(&self.nodes);
        let buffers = fbb.create_vector(&self.buffers);
        let mut batch = arrow_ipc::RecordBatchBuilder::new(&mut fbb);
        batch.add_length(rows as i64);
        batch.add_nodes(nodes);
        batch.add_buffers(buffers);
        let batch = batch.finish();
        let mut message = arrow_ipc::MessageBuilder::new(&mut fbb);
        message.add_version(arrow_ipc::MetadataVersion::V5);
        message.add_header_type(arrow_ipc::MessageHeader::RecordBatch);
        message.add_bodyLength(self.len as i64);
        message.add_header(batch.as_union_value());
        let root = message.finish();
        fbb.finish(root, None);
        fbb.finished_data().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, Float64Type, Int16Type};
    use arrow_array::{
        ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, Float64Array, Int16Array,
    };
    use arrow_flight::utils::flight_data_to_batches;
    use arrow_schema::Field;
    use std::sync::Arc;

    /// A batch of a tensor column (rows of 3 float64s), an int16 column whose rows need
    /// padding, and a float32 column; `rows` rows, sliced from `offset`.
    fn batch(rows: usize, offset: usize) -> RecordBatch {
        let n = rows + offset;
        let values = Float64Array::from_iter_values((0..3 * n).map(|i| i as f64));
        let item = Arc::new(Field::new("item", DataType::Float64, false));
        let tensor = FixedSizeListArray::new(item, 3, Arc::new(values), None);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(tensor),
            Arc::new(Int16Array::from_iter_values((0..n).map(|i| i as i16))),
            Arc::new(Float32Array::from_iter_values(
                (0..n).map(|i| i as f32 / 4.0),
            )),
        ];
        let fields: Vec<Field> = columns
            .iter()
            .zip(["t", "i", "f"])
            .map(|(c, name)| Field::new(name, c.data_type().clone(), false))
            .collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .unwrap()
            .slice(offset, rows)
    }

    /// The FlightData messages of a DoPut request body.
    fn decoded(messages: &Messages) -> Vec<FlightData> {
        let bytes = messages.to_vec();
        grpc::messages(&bytes, "test")
            .unwrap()
            .into_iter()
            .map(|m| FlightData::decode(m).unwrap())
            .collect()
    }

    #[test]
    fn messages_decode_to_the_batches_sent() {
        let sent = [batch(5, 2), batch(0, 0), batch(7, 0)];
        let schema = sent[0].schema();
        let descriptor = FlightDescriptor::new_path(vec!["x".into()]);
        let messages = Messages::new(Some(descriptor.clone()), &schema, &sent, 1 << 20, "test")
            .unwrap()
            .expect("plain columns");
        let data = decoded(&messages);
        assert_eq!(data.len(), 1 + sent.len());
        assert_eq!(data[0].flight_descriptor, Some(descriptor));
        assert!(data[1..].iter().all(|d| d.flight_descriptor.is_none()));
        let got = flight_data_to_batches(&data).unwrap();
        assert_eq!(got, sent);
    }

    #[test]
    fn ragged_columns_travel_as_views_cut_by_their_rows_bytes() {
        use ndarray::{ArrayD, IxDyn};
        // Rows of 1 to 40 float32 triples (12 to 480 bytes), next to a dense column.
        let arrays: Vec<ArrayD<f32>> = (0..40)
            .map(|i| {
                ArrayD::from_shape_fn(IxDyn(&[1 + i, 3]), |j| (i * 1000 + j[0] * 3 + j[1]) as f32)
            })
            .collect();
        let ragged = arrowbridge::ipc::Column::Ragged(vec![
            arrowbridge::RaggedTensor::from_arrays(arrays).unwrap(),
        ]);
        let ids = arrowbridge::ipc::Column::Tensor(arrowbridge::ArrowTensor::from_array(
            ArrayD::from_shape_fn(IxDyn(&[40]), |i| i[0] as i64),
        ));
        let whole = arrowbridge::ipc::record_batch_of(&[("img", &ragged), ("id", &ids)]).unwrap();
        // A slice whose offsets do not start at zero.
        let sent = whole.slice(3, 30);
        let schema = sent.schema();
        let messages = Messages::new(None, &schema, std::slice::from_ref(&sent), 2048, "test")
            .unwrap()
            .expect("ragged columns have views");
        let got = flight_data_to_batches(&decoded(&messages)).unwrap();
        assert!(got.len() > 3, "cut into several messages");
        let rows: usize = got.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 30);
        assert_eq!(
            arrow_select::concat::concat_batches(&schema, &got).unwrap(),
            sent
        );
    }

    #[test]
    fn many_small_ragged_batches_travel_in_few_messages_of_views() {
        use ndarray::{ArrayD, IxDyn};
        // A list put: one batch per array (views of the arrays), 0 to 60 float32 triples.
        let tensors: Vec<arrowbridge::ArrowTensor> = (0..61)
            .map(|i| {
                let a = ArrayD::from_shape_fn(IxDyn(&[i, 3]), |j| (i * 100 + j[0]) as f32);
                arrowbridge::ArrowTensor::from_array(a).as_element()
            })
            .collect();
        let ragged = arrowbridge::ipc::Column::Ragged(
            arrowbridge::RaggedTensor::views_of(&tensors, None).unwrap(),
        );
        let ids = arrowbridge::ipc::Column::Tensor(arrowbridge::ArrowTensor::from_array(
            ArrayD::from_shape_fn(IxDyn(&[61]), |i| i[0] as i64),
        ));
        let columns = [("img", &ragged), ("id", &ids)];
        let sent = arrowbridge::ipc::record_batches_of(&columns).unwrap();
        assert_eq!(sent.len(), 61);
        let schema = sent[0].schema();
        let messages = Messages::new(None, &schema, &sent, 4096, "test")
            .unwrap()
            .expect("ragged columns have views");
        // Every array's values go out where they lie (the empty one has no bytes to send).
        let starts: Vec<*const u8> = messages.chunks.iter().map(|c| c.as_ptr()).collect();
        for tensor in &tensors[1..] {
            assert!(
                starts.contains(&tensor.values().as_ptr()),
                "an array was copied"
            );
        }
        let got = flight_data_to_batches(&decoded(&messages)).unwrap();
        // 22,692 bytes of rows (12 bytes a triple, 8 an id, 12 a shape) in 4 KiB messages.
        assert!((6..=8).contains(&got.len()), "{} messages", got.len());
        let whole = arrowbridge::ipc::record_batch_of(&columns).unwrap();
        assert_eq!(
            arrow_select::concat::concat_batches(&schema, &got).unwrap(),
            whole
        );
    }

    #[test]
    fn batches_are_cut_into_messages_of_at_most_max_bytes() {
        let sent = batch(10, 1);
        // A row is 3 float64s, an int16 and a float32: 30 bytes; 100 bytes hold 3 rows.
        let messages = Messages::new(
            None,
            &sent.schema(),
            std::slice::from_ref(&sent),
            100,
            "test",
        )
        .unwrap()
        .unwrap();
        let data = decoded(&messages);
        let got = flight_data_to_batches(&data).unwrap();
        let rows: Vec<usize> = got.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(rows, [3, 3, 3, 1]);
        let schema = sent.schema();
        assert_eq!(
            arrow_select::concat::concat_batches(&schema, &got).unwrap(),
            sent
        );
    }

    #[test]
    fn bodies_are_views_of_the_columns() {
        let sent = batch(4, 3);
        let messages = Messages::new(
            Some(FlightDescriptor::new_path(vec!["x".into()])),
            &sent.schema(),
            std::slice::from_ref(&sent),
            1 << 20,
            "test",
        )
        .unwrap()
        .unwrap();
        // Where each column's first sent value lies in the column's own memory.
        let first_row = sent.column(0).as_fixed_size_list().value(0);
        let values = first_row.as_primitive::<Float64Type>().values().as_ptr();
        let ints = sent.column(1).as_primitive::<Int16Type>().values().as_ptr();
        let floats = sent
            .column(2)
            .as_primitive::<Float32Type>()
            .values()
            .as_ptr();
        let starts: Vec<*const u8> = messages.chunks.iter().map(|c| c.as_ptr()).collect();
        for column in [values.cast::<u8>(), ints.cast(), floats.cast()] {
            assert!(starts.contains(&column), "a column was copied");
        }
    }

    #[test]
    fn whole_messages_of_one_column_are_views_and_of_several_decode_as_sent() {
        let one = batch(8, 2).project(&[0]).unwrap();
        let data = flight_data(&one.schema(), std::slice::from_ref(&one), 1 << 20).unwrap();
        let first_row = one.column(0).as_fixed_size_list().value(0);
        let values = first_row.as_primitive::<Float64Type>().values().as_ptr();
        assert_eq!(data[1].data_body.as_ptr(), values.cast::<u8>(), "a copy");
        assert_eq!(flight_data_to_batches(&data).unwrap(), [one]);
        let several = batch(8, 2);
        let data = flight_data(&several.schema(), std::slice::from_ref(&several), 100).unwrap();
        let got = flight_data_to_batches(&data).unwrap();
        let schema = several.schema();
        assert_eq!(
            arrow_select::concat::concat_batches(&schema, &got).unwrap(),
            several
        );
    }

    #[test]
    fn columns_without_plain_values_have_no_views() {
        let nulls = Float64Array::from(vec![Some(1.0), None]);
        let flags = BooleanArray::from(vec![true, false]);
        for column in [Arc::new(nulls) as ArrayRef, Arc::new(flags)] {
            let schema = Schema::new(vec![Field::new("c", column.data_type().clone(), true)]);
            let batch = RecordBatch::try_new(Arc::new(schema), vec![column]).unwrap();
            let messages = Messages::new(None, &batch.schema(), &[batch], 1 << 20, "test").unwrap();
            assert!(messages.is_none());
        }
    }
}
