//! Checks of IPC messages before arrow-ipc reads them (arrow-ipc panics on some malformed
//! ones).

use arrow_schema::Schema;

use crate::error::{Error, Result};

/// Checks one IPC message before arrow-ipc decodes it, so that no input, however hostile,
/// reaches a panic or an aborting allocation inside the decoder. `what` names the input in
/// errors (a path, or the Flight call), `metadata` is the message flatbuffer, `body` its
/// body.
///
/// * every buffer of a record or dictionary batch lies inside `body` (arrow-ipc slices the
///   body at the offsets a message declares, and panics past its end);
/// * the uncompressed sizes that compressed buffers declare add up to memory this process
///   may allocate ([`crate::memory::allocation_limit`]; arrow-ipc allocates them up front);
/// * a schema is little-endian (arrow-ipc would hand out byte-swapped values) and has no
///   union columns (whose buffers arrow-ipc slices without checking their lengths);
/// * with the stream's `schema` known (a file's, or the one its schema message brought), a
///   record batch's field nodes and typed buffers fit it: no fixed-size list overflows,
///   every typed buffer holds whole values (arrow-data panics on both).
///
/// Files, streams and the Flight server all decode through this check.
pub fn check_message(
    what: &str,
    metadata: &[u8],
    body: &[u8],
    schema: Option<&Schema>,
) -> Result<()> {
    check(what, metadata, body.len(), Some(body), schema)
}

/// [`check_message`] for a message whose body of `body_len` bytes has not arrived yet (it is
/// to land in place as it does): everything is checked but what needs the body's bytes, so
/// a record batch with compressed buffers is refused.
pub fn check_message_header(
    what: &str,
    metadata: &[u8],
    body_len: usize,
    schema: Option<&Schema>,
) -> Result<()> {
    check(what, metadata, body_len, None, schema)
}

pub(super) fn check(
    what: &str,
    metadata: &[u8],
    body_len: usize,
    body: Option<&[u8]>,
    schema: Option<&Schema>,
) -> Result<()> {
    let bad = |message: String| Error::BadFile {
        path: what.to_string(),
        message,
    };
    let message =
        arrow_ipc::root_as_message(metadata).map_err(|e| bad(format!("corrupt message: {e}")))?;
    if body.is_none() {
        let compressed = match message.header_type() {
            arrow_ipc::MessageHeader::RecordBatch => message
                .header_as_record_batch()
                .is_some_and(|b| b.compression().is_some()),
            arrow_ipc::MessageHeader::DictionaryBatch => message
                .header_as_dictionary_batch()
                .and_then(|d| d.data())
                .is_some_and(|b| b.compression().is_some()),
            _ => false,
        };
        if compressed {
            return Err(bad(
                "a record batch with compressed buffers where the values land in place".into(),
            ));
        }
    }
    let body = body.unwrap_or(&[]);
    let batch = match message.header_type() {
        arrow_ipc::MessageHeader::Schema => {
            return match message.header_as_schema() {
                Some(schema) => check_schema_message(what, schema),
                None => Err(bad("a schema message without a schema".into())),
            }
        }
        arrow_ipc::MessageHeader::RecordBatch => {
            let batch = message.header_as_record_batch();
            if let (Some(batch), Some(schema)) = (batch, schema) {
                check_nodes(what, schema, batch, body)?;
            }
            batch
        }
        arrow_ipc::MessageHeader::DictionaryBatch => {
            message.header_as_dictionary_batch().and_then(|d| d.data())
        }
        _ => None,
    };
    let Some(batch) = batch else { return Ok(()) };
    let compressed = batch.compression().is_some();
    let mut declared_total = 0u64;
    for (i, b) in batch.buffers().iter().flatten().enumerate() {
        let range = usize::try_from(b.offset())
            .ok()
            .zip(usize::try_from(b.length()).ok())
            .and_then(|(start, len)| Some(start..start.checked_add(len)?))
            .filter(|r| r.end <= body_len)
            .ok_or_else(|| {
                bad(format!(
                    "buffer {i} at body offset {} of {} bytes lies outside the message body of {body_len} bytes",
                    b.offset(),
                    b.length(),
                ))
            })?;
        if !compressed || range.is_empty() {
            continue;
        }
        let prefix = body
            .get(range.start..range.start + 8)
            .filter(|_| range.len() >= 8)
            .ok_or_else(|| {
                bad(format!(
                    "compressed buffer {i} at body offset {} has {} bytes, fewer than its 8-byte length prefix",
                    range.start,
                    range.len()
                ))
            })?;
        let declared = i64::from_le_bytes(prefix.try_into().expect("8 bytes"));
        if declared == -1 {
            continue; // stored uncompressed
        }
        let declared = u64::try_from(declared).map_err(|_| {
            bad(format!(
                "compressed buffer {i} declares a negative uncompressed length {declared}"
            ))
        })?;
        declared_total = declared_total.saturating_add(declared);
    }
    if declared_total == 0 {
        return Ok(());
    }
    let physical = crate::memory::physical_memory().unwrap_or(u64::MAX);
    if declared_total > physical {
        return Err(bad(format!(
            "its compressed buffers declare {declared_total} bytes uncompressed, more than this machine's {physical} bytes of memory"
        )));
    }
    crate::memory::check_allocation(
        &format!("{what}: decompressing a record batch"),
        declared_total,
    )
}

/// The schema a schema message carries (`None` for other messages and unreadable ones).
pub fn schema_of_message(metadata: &[u8]) -> Option<Schema> {
    let message = arrow_ipc::root_as_message(metadata).ok()?;
    arrow_ipc::convert::try_fb_to_schema(message.header_as_schema()?).ok()
}

/// Checks the field nodes and buffers of `batch` against `schema`, walking them in the
/// depth-first order the IPC format lays them out (the order arrow-ipc reads them):
///
/// * a node's length is not negative, and a fixed-size list's length times its size fits in
///   an `i64` (arrow-data computes it with `expect`);
/// * a fixed-width buffer holds whole values: its byte length (once decompressed, as the
///   8-byte prefix of a compressed buffer declares it) is a multiple of the value's width
///   (arrow-data's validation asserts it when it views offsets as `i32`).
///
/// Types whose buffer count the schema does not fix (views with variadic buffers, unions)
/// end the walk: what follows them is left to arrow-ipc's own checks.
fn check_nodes(
    what: &str,
    schema: &Schema,
    batch: arrow_ipc::RecordBatch<'_>,
    body: &[u8],
) -> Result<()> {
    use arrow_data::BufferSpec;
    use arrow_schema::DataType as D;

    struct Walk<'a, N, B> {
        what: &'a str,
        nodes: N,
        buffers: B,
        body: &'a [u8],
        compressed: bool,
    }

    impl<'a, 'b, N, B> Walk<'a, N, B>
    where
        N: Iterator<Item = &'b arrow_ipc::FieldNode>,
        B: Iterator<Item = &'b arrow_ipc::Buffer>,
    {
        fn bad(&self, message: String) -> Error {
            Error::BadFile {
                path: self.what.to_string(),
                message,
            }
        }

        /// The byte length buffer `b` has once decoded (checked to lie in the body before).
        fn decoded_len(&self, b: &arrow_ipc::Buffer) -> Option<u64> {
            let len = u64::try_from(b.length()).ok()?;
            if !self.compressed || len == 0 {
                return Some(len);
            }
            let start = usize::try_from(b.offset()).ok()?;
            let prefix = self.body.get(start..start.checked_add(8)?)?;
            match i64::from_le_bytes(prefix.try_into().ok()?) {
                -1 => Some(len - 8),
                declared => u64::try_from(declared).ok(),
            }
        }

        /// Walks one field; `false` when the walk cannot go on past it.
        fn field(&mut self, data_type: &D) -> Result<bool> {
            // Fewer nodes or buffers than fields is reported by arrow-ipc itself, as an error.
            let Some(node) = self.nodes.next() else {
                return Ok(false);
            };
            let len = u64::try_from(node.length()).map_err(|_| {
                self.bad(format!(
                    "a field node declares a negative length {}",
                    node.length()
                ))
            })?;
            if matches!(
                data_type,
                D::Union(..) | D::Utf8View | D::BinaryView | D::Null
            ) {
                return Ok(false);
            }
            let layout =
                crate::ffi::layout(data_type, self.what).map_err(|e| self.bad(e.to_string()))?;
            if layout.variadic {
                return Ok(false);
            }
            if layout.can_contain_null_mask && self.buffers.next().is_none() {
                return Ok(false);
            }
            for spec in &layout.buffers {
                let Some(buffer) = self.buffers.next() else {
                    return Ok(false);
                };
                // Widths that are not powers of two (fixed_size_binary) are not viewed as
                // typed values, and writers pad buffers to 8 bytes, so only typed widths count.
                if let BufferSpec::FixedWidth { byte_width, .. } = spec {
                    let width = *byte_width as u64;
                    if !width.is_power_of_two() {
                        continue;
                    }
                    match self.decoded_len(buffer) {
                        Some(n) if width > 0 && n % width != 0 => {
                            return Err(self.bad(format!(
                                "a buffer of {data_type} values has {n} bytes, not a whole number of {width}-byte values"
                            )))
                        }
                        _ => {}
                    }
                }
            }
            match data_type {
                D::FixedSizeList(child, size) => {
                    let size = u64::try_from(*size).unwrap_or(0);
                    len.checked_mul(size)
                        .filter(|&n| n <= i64::MAX as u64)
                        .ok_or_else(|| {
                            self.bad(format!(
                                "a fixed_size_list node of {len} rows of {size} values overflows"
                            ))
                        })?;
                    self.field(child.data_type())
                }
                D::List(child)
                | D::LargeList(child)
                | D::ListView(child)
                | D::LargeListView(child)
                | D::Map(child, _) => self.field(child.data_type()),
                D::Struct(fields) => {
                    for f in fields {
                        if !self.field(f.data_type())? {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                }
                D::RunEndEncoded(ends, values) => {
                    Ok(self.field(ends.data_type())? && self.field(values.data_type())?)
                }
                _ => Ok(true),
            }
        }
    }

    let (Some(nodes), Some(buffers)) = (batch.nodes(), batch.buffers()) else {
        return Ok(());
    };
    let mut walk = Walk {
        what,
        nodes: nodes.iter(),
        buffers: buffers.iter(),
        body,
        compressed: batch.compression().is_some(),
    };
    for field in schema.fields() {
        if !walk.field(field.data_type())? {
            break;
        }
    }
    Ok(())
}

pub(super) fn check_schema_message(what: &str, schema: arrow_ipc::Schema<'_>) -> Result<()> {
    let decoded = schema_of(what, schema)?;
    check_schema(what, &decoded)
}

/// The schema of a schema flatbuffer, refused when its data is not in this machine's byte
/// order (arrow-ipc would hand out byte-swapped values).
pub(super) fn schema_of(what: &str, schema: arrow_ipc::Schema<'_>) -> Result<Schema> {
    let native = if cfg!(target_endian = "little") {
        arrow_ipc::Endianness::Little
    } else {
        arrow_ipc::Endianness::Big
    };
    if schema.endianness() != native {
        return Err(Error::ByteOrder {
            what: what.to_string(),
            dtype: format!(
                "data written {} (the schema's endianness)",
                if native == arrow_ipc::Endianness::Little {
                    "big-endian"
                } else {
                    "little-endian"
                }
            ),
        });
    }
    arrow_ipc::convert::try_fb_to_schema(schema).map_err(|e| Error::BadFile {
        path: what.to_string(),
        message: format!("corrupt schema: {e}"),
    })
}

/// Checks a decoded schema: names are unique (arrowbridge returns columns by name, so two
/// columns of one name would lose one of them) and no column is a union (see
/// [`check_message`]).
pub fn check_schema(what: &str, schema: &Schema) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for field in schema.fields() {
        if !seen.insert(field.name().as_str()) {
            let count = schema
                .fields()
                .iter()
                .filter(|f| f.name() == field.name())
                .count();
            return Err(Error::BadFile {
                path: what.to_string(),
                message: format!(
                    "{count} columns are named {:?}; arrowbridge reads columns by name, so names must be unique (rename them, e.g. with pyarrow's Table.rename_columns)",
                    field.name()
                ),
            });
        }
        if has_union(field.data_type()) {
            return Err(Error::UnsupportedType {
                what: format!("{what}: column {:?}", field.name()),
                kind: "Arrow type",
                name: field.data_type().to_string(),
            });
        }
    }
    Ok(())
}

fn has_union(data_type: &arrow_schema::DataType) -> bool {
    use arrow_schema::DataType as D;
    match data_type {
        D::Union(..) => true,
        D::List(f)
        | D::LargeList(f)
        | D::ListView(f)
        | D::LargeListView(f)
        | D::FixedSizeList(f, _)
        | D::Map(f, _) => has_union(f.data_type()),
        D::Struct(fields) => fields.iter().any(|f| has_union(f.data_type())),
        D::Dictionary(_, v) => has_union(v),
        D::RunEndEncoded(_, v) => has_union(v.data_type()),
        _ => false,
    }
}
