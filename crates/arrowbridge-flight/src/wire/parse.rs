//! The parser of FlightData streams that lands their bodies in place, as the frames bring
//! them: the client's DoGet answers ([`crate::client`]) and the server's DoPut requests
//! ([`crate::server`]).
//!
//! tonic's decoder gathers every gRPC message into a buffer of its own before it decodes it:
//! for a stream of large record batches, one more copy of every byte than the network
//! needs. Here the response's HTTP/2 data frames are parsed as they arrive: the gRPC framing
//! and the few fields of each `FlightData` message by hand, and each message's body is
//! copied from the frame it came in to the rows of the destination it belongs to
//! ([`Sink::begin`], [`Sink::write`]). The request still goes through tonic's channel (TLS,
//! Unix sockets, HTTP/2 connection sharing, timeouts), and errors are the server's status.
//! The server parses the DoPut streams it lands in place with the same [`Parser`]
//! ([`crate::server::routes`]).
//!
//! Every message is checked ([`arrowbridge::ipc::check_message_header`]) before any of its
//! body lands, exactly as [`crate::wire::receive`] checks whole messages.

use arrow_schema::Schema;
use arrowbridge::landing::{Incoming, Sink};
use tonic::{Code, Status};

use crate::wire::receive::refused;

/// `FlightData` field numbers (Flight.proto).
const DATA_HEADER: u64 = 2;
const DATA_BODY: u64 = 1000;
/// Protobuf wire types.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

/// Lands the bytes of a DoGet response body (`chunks`, as the frames brought them) in a new
/// destination of `rows` rows of `schema`, as the client's DoGet does: for fuzzing the parser
/// with whatever a server may send.
#[cfg(any(test, feature = "fuzzing"))]
pub fn land_response<'c>(
    schema: &Schema,
    rows: usize,
    chunks: impl IntoIterator<Item = &'c [u8]>,
) -> Result<arrow_array::RecordBatch, Status> {
    let what = "DoGet";
    let mut destination =
        arrowbridge::landing::Destination::new(what, std::sync::Arc::new(schema.clone()), rows)
            .map_err(refused)?
            .ok_or_else(|| Status::invalid_argument("columns that do not land in place"))?;
    let mut parts = destination.parts(&[rows]).map_err(refused)?;
    let mut parser = Parser::new(what, schema, &mut parts[0]);
    for chunk in chunks {
        parser.feed(chunk)?;
    }
    parser.finish()?;
    for part in parts {
        part.finish().map_err(refused)?;
    }
    destination.into_batch().map_err(refused)
}

/// Lands the bytes of a DoPut request body after its schema message (`chunks`, as the
/// frames brought them) message by message in [`arrowbridge::landing::Bodies`], as the
/// server does for columns that do not land in one buffer each (ragged data): for fuzzing
/// the parser and the landing with whatever a client may send.
#[cfg(any(test, feature = "fuzzing"))]
pub fn land_bodies<'c>(
    schema: &Schema,
    chunks: impl IntoIterator<Item = &'c [u8]>,
) -> Result<Vec<arrow_array::RecordBatch>, Status> {
    let what = "DoPut";
    let mut bodies = arrowbridge::landing::Bodies::new(what, std::sync::Arc::new(schema.clone()));
    let mut parser = Parser::after_schema(what, schema, &mut bodies);
    for chunk in chunks {
        parser.feed(chunk)?;
    }
    parser.finish()?;
    bodies.into_batches().map_err(refused)
}

/// Where the parser is in the stream.
#[derive(Debug)]
enum State {
    /// In a message's 5-byte gRPC prefix.
    Prefix,
    /// At (or in) a field's key and length.
    Key,
    /// In the value of field `field` (kept when it is the data header), `left` bytes to go.
    Value { field: u64, left: usize },
    /// In the body, `at` bytes into it, `left` to go.
    Body { at: usize, left: usize },
}

/// A parser of a stream of FlightData messages as its bytes arrive (a DoGet answer, a DoPut
/// request), landing record batches in a [`Sink`].
pub(crate) struct Parser<'p, S: Sink> {
    what: &'p str,
    /// The status code of a stream that is not well-formed: the sender's fault.
    code: Code,
    expected: &'p Schema,
    part: &'p mut S,
    state: State,
    /// Bytes of the prefix or of a key and length, gathered across frames.
    pending: Vec<u8>,
    /// Bytes of the current message still to come.
    remaining: usize,
    /// The current message's data header.
    header: Vec<u8>,
    /// Whether the current message had a body field.
    bodied: bool,
    /// The record batch whose body is landing.
    incoming: Option<Incoming>,
    /// The stream's schema, once its schema message came.
    schema: Option<Schema>,
}

impl<'p, S: Sink> Parser<'p, S> {
    /// A parser of a server's answer, which must begin with a schema of `expected`'s fields.
    pub(crate) fn new(what: &'p str, expected: &'p Schema, part: &'p mut S) -> Self {
        Parser {
            what,
            code: Code::Internal,
            expected,
            part,
            state: State::Prefix,
            pending: Vec::with_capacity(16),
            remaining: 0,
            header: Vec::new(),
            bodied: false,
            incoming: None,
            schema: None,
        }
    }

    /// A parser of a client's request whose schema message, of `schema`, was read already.
    pub(crate) fn after_schema(what: &'p str, schema: &'p Schema, part: &'p mut S) -> Self {
        Parser {
            code: Code::InvalidArgument,
            schema: Some(schema.clone()),
            ..Parser::new(what, schema, part)
        }
    }

    fn bad(&self, message: impl std::fmt::Display) -> Status {
        Status::new(self.code, format!("{}: {message}", self.what))
    }

    /// Takes in the next bytes of the response.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            match self.state {
                State::Prefix => {
                    let n = (5 - self.pending.len()).min(data.len());
                    self.pending.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.pending.len() == 5 {
                        if self.pending[0] != 0 {
                            return Err(
                                self.bad("a compressed gRPC message, which was not asked for")
                            );
                        }
                        let len = u32::from_be_bytes(self.pending[1..5].try_into().expect("4"));
                        if len as usize > crate::wire::MAX_MESSAGE {
                            return Err(Status::out_of_range(format!(
                                "{}: a message of {len} bytes, over the limit of {} bytes",
                                self.what,
                                crate::wire::MAX_MESSAGE
                            )));
                        }
                        self.pending.clear();
                        self.remaining = len as usize;
                        self.state = State::Key;
                        if self.remaining == 0 {
                            self.end_message()?;
                        }
                    }
                }
                State::Key => {
                    // Keys and lengths are varints: taken a byte at a time (a few per message).
                    self.pending.push(data[0]);
                    data = &data[1..];
                    self.remaining -= 1;
                    self.key()?;
                }
                State::Value { field, left } => {
                    let n = left.min(data.len());
                    if field == DATA_HEADER {
                        self.header.extend_from_slice(&data[..n]);
                    }
                    data = &data[n..];
                    self.remaining -= n;
                    self.state = if n == left {
                        State::Key
                    } else {
                        State::Value {
                            field,
                            left: left - n,
                        }
                    };
                    self.end_field()?;
                }
                State::Body { at, left } => {
                    let n = left.min(data.len());
                    if let Some(incoming) = &self.incoming {
                        self.part.write(incoming, at, &data[..n]);
                    }
                    data = &data[n..];
                    self.past_body_bytes(at, left, n)?;
                }
            }
        }
        Ok(())
    }

    /// Moves `n` bytes into a body that was at offset `at` with `left` bytes to go.
    fn past_body_bytes(&mut self, at: usize, left: usize, n: usize) -> Result<(), Status> {
        self.remaining -= n;
        self.state = if n == left {
            State::Key
        } else {
            State::Body {
                at: at + n,
                left: left - n,
            }
        };
        self.end_field()
    }

    /// After a byte of a key or length: decodes them once complete.
    fn key(&mut self) -> Result<(), Status> {
        let Some((key, used)) = varint(&self.pending).map_err(|m| self.bad(m))? else {
            return self.truncated();
        };
        let (field, wire) = (key >> 3, key & 7);
        let skip = match wire {
            LEN => {
                let Some((len, _)) = varint(&self.pending[used..]).map_err(|m| self.bad(m))? else {
                    return self.truncated();
                };
                usize::try_from(len).unwrap_or(usize::MAX)
            }
            VARINT => {
                let Some(_) = varint(&self.pending[used..]).map_err(|m| self.bad(m))? else {
                    return self.truncated();
                };
                0
            }
            FIXED64 => 8,
            FIXED32 => 4,
            other => return Err(self.bad(format!("a field of protobuf wire type {other}"))),
        };
        self.pending.clear();
        if field == DATA_HEADER && skip > crate::wire::MAX_MESSAGE {
            return Err(self.bad(format!("a data header of {skip} bytes")));
        }
        if skip > self.remaining {
            return Err(self.bad(format!(
                "field {field} of {skip} bytes overruns its message ({} bytes left)",
                self.remaining
            )));
        }
        if field == DATA_BODY && wire == LEN {
            self.begin_body(skip)?;
            self.state = State::Body { at: 0, left: skip };
        } else {
            if field == DATA_HEADER && wire == LEN && self.bodied {
                return Err(self.bad("a FlightData message whose body precedes its header"));
            }
            self.state = State::Value { field, left: skip };
        }
        self.end_field()
    }

    /// A key or length not complete yet: fine unless the message ends here.
    fn truncated(&mut self) -> Result<(), Status> {
        if self.remaining == 0 {
            return Err(self.bad("a FlightData message that ends inside a field's key"));
        }
        Ok(())
    }

    /// Once a field is complete: the message ends when its bytes do.
    fn end_field(&mut self) -> Result<(), Status> {
        let complete = match self.state {
            State::Key => self.pending.is_empty(),
            State::Value { left, .. } | State::Body { left, .. } => left == 0,
            State::Prefix => false,
        };
        if complete && self.remaining == 0 {
            self.end_message()?;
        }
        Ok(())
    }

    /// The body field begins: the message's header says where its bytes go.
    fn begin_body(&mut self, len: usize) -> Result<(), Status> {
        if self.bodied {
            return Err(self.bad("a FlightData message with two bodies"));
        }
        self.bodied = true;
        if self.header.is_empty() {
            return Err(self.bad("a FlightData message whose body precedes its header"));
        }
        match &self.schema {
            None => {
                arrowbridge::ipc::check_message_header(self.what, &self.header, len, None)
                    .map_err(refused)?;
                let schema = arrowbridge::ipc::schema_of_message(&self.header)
                    .ok_or_else(|| self.bad("the stream must begin with a schema message"))?;
                if schema.fields() != self.expected.fields() {
                    return Err(self.bad("the stream's columns differ from the item's"));
                }
                self.schema = Some(schema);
            }
            Some(schema) => {
                arrowbridge::ipc::check_message_header(self.what, &self.header, len, Some(schema))
                    .map_err(refused)?;
                let message = arrow_ipc::root_as_message(&self.header)
                    .map_err(|e| self.bad(format!("corrupt message: {e}")))?;
                if message.header_type() != arrow_ipc::MessageHeader::RecordBatch {
                    return Err(self.bad(format!(
                        "a {:?} message in a stream of tensors, where only record batches may follow the schema",
                        message.header_type()
                    )));
                }
                self.incoming = self.part.begin(&self.header, len).map_err(refused)?;
            }
        }
        Ok(())
    }

    fn end_message(&mut self) -> Result<(), Status> {
        // A message without a body field has an empty body.
        if !self.bodied && !self.header.is_empty() {
            self.begin_body(0)?;
        }
        if let Some(incoming) = self.incoming.take() {
            self.part.commit(incoming);
        }
        self.header.clear();
        self.bodied = false;
        self.state = State::Prefix;
        Ok(())
    }

    /// The stream ended: not inside a message, and after a schema.
    pub(crate) fn finish(self) -> Result<(), Status> {
        if !matches!(self.state, State::Prefix) || !self.pending.is_empty() {
            return Err(self.bad("the stream ended inside a message"));
        }
        if self.schema.is_none() {
            return Err(self.bad("an empty stream"));
        }
        Ok(())
    }
}

/// A protobuf varint at the start of `bytes` and its length; `None` when incomplete.
fn varint(bytes: &[u8]) -> Result<Option<(u64, usize)>, &'static str> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate() {
        if i == 10 {
            return Err("a protobuf varint longer than 10 bytes");
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Float64Array, Int32Array, RecordBatch};
    use arrow_flight::utils::batches_to_flight_data;
    use arrow_flight::FlightData;
    use arrow_schema::{DataType, Field};
    use prost::Message;
    use std::sync::Arc;

    fn batch(rows: std::ops::Range<i32>) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("i", DataType::Int32, false),
            Field::new("x", DataType::Float64, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int32Array::from_iter_values(rows.clone())),
                Arc::new(Float64Array::from_iter_values(rows.map(|r| r as f64 / 2.0))),
            ],
        )
        .unwrap()
    }

    /// The bytes of a DoGet response body: each message as a gRPC frame.
    fn framed(messages: &[FlightData]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            let encoded = m.encode_to_vec();
            out.push(0);
            out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
            out.extend_from_slice(&encoded);
        }
        out
    }

    /// Feeds `bytes` in pieces of `piece` bytes into a destination of `rows` rows of `schema`.
    fn land(
        schema: &Schema,
        rows: usize,
        bytes: &[u8],
        piece: usize,
    ) -> Result<RecordBatch, Status> {
        land_response(schema, rows, bytes.chunks(piece))
    }

    #[test]
    fn messages_split_anywhere_land_as_sent() {
        let sent = [batch(0..5), batch(5..12), batch(12..12), batch(12..20)];
        let schema = sent[0].schema();
        let mut messages = batches_to_flight_data(&schema, &sent).unwrap();
        // An app_metadata-only message between batches is skipped.
        messages.insert(2, FlightData::new().with_app_metadata(vec![1, 2, 3]));
        let bytes = framed(&messages);
        let expected = arrow_select::concat::concat_batches(&schema, &sent).unwrap();
        for piece in [1, 2, 5, 7, 64, 1000, bytes.len()] {
            let got = land(&schema, 20, &bytes, piece).unwrap();
            assert_eq!(got, expected, "pieces of {piece} bytes");
        }
    }

    #[test]
    fn hostile_framing_is_a_clear_error() {
        let sent = batch(0..4);
        let schema = sent.schema();
        let messages = batches_to_flight_data(&schema, [&sent]).unwrap();
        let good = framed(&messages);
        let err = |bytes: &[u8]| {
            land(&schema, 4, bytes, 3)
                .unwrap_err()
                .message()
                .to_string()
        };

        let mut compressed = good.clone();
        compressed[0] = 1;
        assert!(err(&compressed).contains("compressed gRPC message"));

        assert!(err(&good[..good.len() - 1]).contains("ended inside a message"));
        assert!(err(&good[..5]).contains("ended inside a message"));
        assert!(err(&[]).contains("an empty stream"));

        // A body before its header.
        let mut swapped = framed(&messages[..1]);
        let body_first = [&[0xc2, 0x3e, 0x01, 0x00][..], &[0x12, 0x01, 0x00][..]].concat();
        swapped.push(0);
        swapped.extend_from_slice(&(body_first.len() as u32).to_be_bytes());
        swapped.extend_from_slice(&body_first);
        assert!(err(&swapped).contains("body precedes its header"));

        // A field longer than its message.
        let overrun = [0, 0, 0, 0, 3, 0x12, 0x7f, 0];
        assert!(err(&overrun).contains("overruns its message"));

        // A varint that never ends.
        let mut endless = vec![0, 0, 0, 0, 12];
        endless.extend([0xff; 12]);
        assert!(err(&endless).contains("longer than 10 bytes"));

        // More rows than the destination holds.
        let twice = framed(&batches_to_flight_data(&schema, [&sent, &sent]).unwrap());
        assert!(err(&twice).contains("overflows the 4 rows"));

        // Columns other than the item's.
        let other = batch(0..4).project(&[1]).unwrap();
        let other = framed(&batches_to_flight_data(&other.schema(), [&other]).unwrap());
        assert!(err(&other).contains("columns differ"));
    }

    /// Batches of one ragged column, `rows` rows each, every row of a shape of its own.
    fn ragged_batches(rows: &[usize]) -> Vec<arrow_array::RecordBatch> {
        let mut next = 0u16;
        rows.iter()
            .map(|&n| {
                let arrays: Vec<ndarray::ArrayD<f32>> = (0..n)
                    .map(|_| {
                        next += 1;
                        let shape = vec![1 + usize::from(next % 3), 2 + usize::from(next % 4)];
                        ndarray::ArrayD::from_elem(shape, f32::from(next))
                    })
                    .collect();
                let ragged = arrowbridge::RaggedTensor::from_arrays(arrays).unwrap();
                let column = arrowbridge::ipc::Column::Ragged(vec![ragged]);
                arrowbridge::ipc::record_batch_of(&[("r", &column)]).unwrap()
            })
            .collect()
    }

    #[test]
    fn a_ragged_put_lands_message_by_message_in_any_pieces() {
        let mut sent = ragged_batches(&[3, 1, 5]);
        sent.insert(2, sent[1].slice(0, 0));
        let schema = sent[0].schema();
        // After the schema message, as the server's route reads a put.
        let messages = &batches_to_flight_data(&schema, &sent).unwrap()[1..];
        let bytes = framed(messages);
        for piece in [1, 3, 64, 1000, bytes.len()] {
            let got = land_bodies(&schema, bytes.chunks(piece)).unwrap();
            let columns = |batches: &[arrow_array::RecordBatch]| -> Vec<_> {
                batches.iter().map(|b| b.column(0).to_data()).collect()
            };
            assert_eq!(columns(&got), columns(&sent), "pieces of {piece} bytes");
        }
        // Cut inside a message: an error, not a batch of unwritten bytes.
        let cut = land_bodies(&schema, [&bytes[..bytes.len() - 7]]).unwrap_err();
        assert!(cut.message().contains("ended inside a message"), "{cut}");
    }
}
