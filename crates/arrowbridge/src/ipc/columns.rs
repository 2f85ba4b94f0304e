//! Named tensors as record batches (one column each) and back.

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, RecordBatchOptions};
use arrow_schema::{Field, Schema};

use crate::error::{Error, Result};
use crate::ragged::RaggedTensor;
use crate::tensor::{ArrowTensor, Form};

use super::*;

/// pyarrow, polars and duckdb expect). Otherwise every column holds its whole array in a
/// single row, marked `arrowbridge.form = element`, so that any set of shapes round-trips.
/// One record batch holding `columns`.
///
/// When every tensor has at least one axis and all share the length of axis 0, they become
/// rows of one table (a file of `embeddings` (N, 768) and `labels` (N,) is N rows, as
/// pyarrow, polars and duckdb expect). Otherwise every column holds its whole array in a
/// single row, marked `arrowbridge.form = element`, so that any set of shapes round-trips.
pub fn record_batch(columns: &[(&str, &ArrowTensor)]) -> Result<RecordBatch> {
    let rows = columns
        .first()
        .and_then(|(_, t)| t.shape().first().copied());
    let as_rows = rows.is_some()
        && columns
            .iter()
            .all(|(_, t)| t.form() == Form::Rows && t.shape().first().copied() == rows);
    let mut fields = Vec::with_capacity(columns.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    for (name, tensor) in columns {
        if as_rows {
            fields.push(tensor.field(name));
            arrays.push(tensor.array());
        } else {
            let element = tensor.as_element();
            fields.push(column_field(name, &element));
            arrays.push(element.array());
        }
    }
    let schema = Arc::new(Schema::new(fields));
    let options =
        RecordBatchOptions::new().with_row_count(Some(if as_rows { rows.unwrap_or(0) } else { 1 }));
    Ok(RecordBatch::try_new_with_options(schema, arrays, &options)?)
}

/// A column of a table: a tensor, or ragged data (`arrow.variable_shape_tensor`), one part
/// per record batch when read (each part a view of its batch).
#[derive(Clone, Debug)]
pub enum Column {
    /// A tensor (see [`record_batch`] for how it becomes rows).
    Tensor(ArrowTensor),
    /// Ragged data: one row per tensor.
    Ragged(Vec<RaggedTensor>),
}

impl Column {
    /// The tensor, when the column is one (not ragged).
    pub fn tensor(&self) -> Option<&ArrowTensor> {
        match self {
            Column::Tensor(t) => Some(t),
            Column::Ragged(_) => None,
        }
    }

    /// The ragged parts, when the column is ragged.
    pub fn ragged(&self) -> Option<&[RaggedTensor]> {
        match self {
            Column::Tensor(_) => None,
            Column::Ragged(parts) => Some(parts),
        }
    }
}

/// Every column of `batches` (of `schema`), ragged ones included: a tensor as
/// [`column_across`] reads it, an `arrow.variable_shape_tensor` column as one
/// [`RaggedTensor`] per batch, each a view of its batch (a copy only where a buffer is not
/// aligned for its type).
pub fn columns_of(schema: &Schema, batches: &[RecordBatch]) -> Result<Vec<(String, Column)>> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let column = if crate::ragged::is_ragged_field(field) {
                Column::Ragged(
                    batches
                        .iter()
                        .map(|b| RaggedTensor::from_arrow(field, &b.column(i).to_data(), true))
                        .collect::<Result<_>>()?,
                )
            } else {
                Column::Tensor(column_across(schema, batches, i)?)
            };
            Ok((field.name().clone(), column))
        })
        .collect()
}

/// Checks that no row of `batches` is larger than `row_limit` bytes, for rows that travel
/// whole in messages of at most that size; the error names the first that is, counting rows
/// across the batches.
pub fn check_row_sizes(batches: &[RecordBatch], row_limit: usize) -> Result<()> {
    let mut row0 = 0;
    for batch in batches {
        let sizes = row_sizes(batch);
        if let Some((row, size)) = sizes.into_iter().enumerate().find(|(_, s)| *s > row_limit) {
            return Err(Error::shape(
                format!("row {}", row0 + row),
                format!(
                    "{size} bytes, more than one message carries ({row_limit} bytes); rows \
                     travel whole, so split the tensor into smaller ones"
                ),
            ));
        }
        row0 += batch.num_rows();
    }
    Ok(())
}

/// The bytes of each row of `batch`'s columns (what messages of rows that differ in size are
/// cut by): the same for every row of tensor columns, from the list offsets for ragged ones.
pub fn row_sizes(batch: &RecordBatch) -> Vec<usize> {
    let widths: Vec<RowWidth> = batch.columns().iter().map(RowWidth::of).collect();
    (0..batch.num_rows())
        .map(|row| widths.iter().map(|w| w.row(row)).sum())
        .collect()
}

/// The bytes of each row of a column: fixed for a tensor column, from the list offsets of
/// a ragged one.
enum RowWidth {
    Fixed(usize),
    Listed {
        offsets: Vec<i64>,
        item: usize,
        fixed: usize,
    },
}

impl RowWidth {
    fn of(column: &ArrayRef) -> RowWidth {
        use arrow_array::cast::AsArray;
        use arrow_schema::DataType as D;
        let len = column.len().max(1);
        if let D::Struct(_) = column.data_type() {
            let parts = column.as_struct();
            let (values, shapes) = (parts.column(0), parts.column(1));
            let fixed = shapes.to_data().get_slice_memory_size().unwrap_or(0) / len;
            let width = |t: &D| t.primitive_width().unwrap_or(1);
            let listed = match values.data_type() {
                D::List(f) => Some((
                    values
                        .as_list::<i32>()
                        .value_offsets()
                        .iter()
                        .map(|&o| i64::from(o))
                        .collect(),
                    width(f.data_type()),
                )),
                D::LargeList(f) => Some((
                    values.as_list::<i64>().value_offsets().to_vec(),
                    width(f.data_type()),
                )),
                _ => None,
            };
            if let Some((offsets, item)) = listed {
                return RowWidth::Listed {
                    offsets,
                    item,
                    fixed,
                };
            }
        }
        RowWidth::Fixed(column.to_data().get_slice_memory_size().unwrap_or(0) / len)
    }

    fn row(&self, row: usize) -> usize {
        match self {
            RowWidth::Fixed(bytes) => *bytes,
            RowWidth::Listed {
                offsets,
                item,
                fixed,
            } => {
                let n = offsets[row + 1].saturating_sub(offsets[row]);
                (n as usize).saturating_mul(*item).saturating_add(*fixed)
            }
        }
    }
}

/// One record batch holding `columns`, some of them ragged: every column must have the same
/// number of rows (a ragged column one per tensor, a tensor the length of its axis 0). Without
/// a ragged column this is [`record_batch`].
pub fn record_batch_of(columns: &[(&str, &Column)]) -> Result<RecordBatch> {
    if columns.iter().all(|(_, c)| matches!(c, Column::Tensor(_))) {
        let tensors: Vec<(&str, &ArrowTensor)> = columns
            .iter()
            .map(|(name, c)| match c {
                Column::Tensor(t) => (*name, t),
                Column::Ragged(_) => unreachable!("checked above"),
            })
            .collect();
        return record_batch(&tensors);
    }
    let mut fields = Vec::with_capacity(columns.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    let mut rows: Option<(&str, usize)> = None;
    for (name, column) in columns {
        let (field, array, n) = match column {
            Column::Tensor(t) => {
                let (field, array) = rows_column(name, t)?;
                let n = array.len();
                (field, array, n)
            }
            Column::Ragged(parts) => {
                let joined = RaggedTensor::concat(parts)?;
                (joined.field(name), joined.array(), joined.len())
            }
        };
        same_rows(&mut rows, name, n)?;
        fields.push(field);
        arrays.push(array);
    }
    let schema = Arc::new(Schema::new(fields));
    let options = RecordBatchOptions::new().with_row_count(rows.map(|(_, n)| n));
    Ok(RecordBatch::try_new_with_options(schema, arrays, &options)?)
}

/// [`record_batch_of`]'s rows without its copy of ragged columns of several parts (a list of
/// arrays made into one part per array, [`RaggedTensor::views_of`]): the rows are cut where
/// a column's parts meet, so that every batch is views of the columns' own memory. A writer
/// that sends the batches one after another (a Flight put) sends the same rows.
pub fn record_batches_of(columns: &[(&str, &Column)]) -> Result<Vec<RecordBatch>> {
    let several = |c: &Column| matches!(c, Column::Ragged(parts) if parts.len() > 1);
    if !columns.iter().any(|(_, c)| several(c)) {
        return Ok(vec![record_batch_of(columns)?]);
    }
    // Each column as its pieces, each with the row it starts at.
    let mut fields = Vec::with_capacity(columns.len());
    let mut pieces: Vec<Vec<(usize, ArrayRef)>> = Vec::with_capacity(columns.len());
    let mut rows: Option<(&str, usize)> = None;
    let mut cuts = std::collections::BTreeSet::new();
    for (name, column) in columns {
        let (field, column_pieces) = match column {
            Column::Tensor(t) => {
                let (field, array) = rows_column(name, t)?;
                (field, vec![(0, array)])
            }
            Column::Ragged(parts) => {
                let field = parts.first().map(|p| p.field(name)).ok_or_else(|| {
                    Error::shape(format!("column {name:?}"), "a ragged column of no parts")
                })?;
                let mut start = 0;
                let mut column_pieces = Vec::with_capacity(parts.len());
                for (i, part) in parts.iter().enumerate() {
                    if part.field(name) != field {
                        return Err(Error::shape(
                            format!("column {name:?} part {i}"),
                            "its type or metadata differ from part 0's",
                        ));
                    }
                    column_pieces.push((start, part.array()));
                    start += part.len();
                }
                (field, column_pieces)
            }
        };
        let n = column_pieces.last().map_or(0, |(start, a)| start + a.len());
        same_rows(&mut rows, name, n)?;
        cuts.extend(column_pieces.iter().map(|(start, _)| *start));
        fields.push(field);
        pieces.push(column_pieces);
    }
    let total = rows.map_or(0, |(_, n)| n);
    cuts.insert(total);
    let schema = Arc::new(Schema::new(fields));
    let cuts: Vec<usize> = cuts.into_iter().collect();
    let mut batches = Vec::with_capacity(cuts.len());
    for window in cuts.windows(2) {
        let (start, len) = (window[0], window[1] - window[0]);
        if len == 0 {
            continue;
        }
        let arrays = pieces
            .iter()
            .map(|column| {
                // The last piece that starts at or before `start` holds the window's rows.
                let (at, array) = &column[column.partition_point(|(s, _)| *s <= start) - 1];
                array.slice(start - at, len)
            })
            .collect();
        let options = RecordBatchOptions::new().with_row_count(Some(len));
        batches.push(RecordBatch::try_new_with_options(
            schema.clone(),
            arrays,
            &options,
        )?);
    }
    if batches.is_empty() {
        return Ok(vec![record_batch_of(columns)?]);
    }
    Ok(batches)
}

/// A tensor column of a table with ragged columns: its rows (axis 0) as Arrow rows.
fn rows_column(name: &str, t: &ArrowTensor) -> Result<(Field, ArrayRef)> {
    if t.form() == Form::Rows && !t.shape().is_empty() {
        return Ok((t.field(name), t.array()));
    }
    Err(Error::shape(
        format!("column {name:?}"),
        format!(
            "an array of shape {:?} cannot share a table with ragged columns (it has no rows)",
            t.shape()
        ),
    ))
}

/// Checks that column `name` has as many rows (`n`) as the columns before it (`rows`, the
/// first column's name and rows, set by the first call).
fn same_rows<'a>(rows: &mut Option<(&'a str, usize)>, name: &'a str, n: usize) -> Result<()> {
    match rows {
        Some((first, r)) if *r != n => Err(Error::shape(
            format!("column {name:?}"),
            format!(
                "{n} rows, column {first:?} has {r}: a table with ragged columns needs one row count (a ragged column has one row per array)"
            ),
        )),
        None => {
            *rows = Some((name, n));
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The field of a column holding `tensor`: its own [`ArrowTensor::field`], marked
/// `arrowbridge.form = element` when the tensor is one whole element.
pub(crate) fn column_field(name: &str, tensor: &ArrowTensor) -> Field {
    let field = tensor.field(name);
    if tensor.form() == Form::Rows {
        return field;
    }
    let mut metadata = field.metadata().clone();
    metadata.insert(FORM_KEY.to_string(), "element".to_string());
    field.with_metadata(metadata)
}

/// The tensor a column of a record batch holds: a view of its buffers, except for a
/// bit-packed `boolean` column (pyarrow's bool), which is unpacked into bytes (a copy).
pub(crate) fn column_tensor(field: &Field, array: &dyn Array) -> Result<ArrowTensor> {
    let tensor = ArrowTensor::from_arrow_unpacking(field, array.to_data())?;
    match field.metadata().get(FORM_KEY).map(String::as_str) {
        Some("element") => tensor.into_element(),
        Some("flat") => tensor.reshaped(&flat_shape(field)?),
        _ => Ok(tensor),
    }
}

/// The shape a flat column restores (see [`wire_batches`]).
pub(super) fn flat_shape(field: &Field) -> Result<Vec<usize>> {
    let what = format!("field {:?}", field.name());
    let json = field
        .metadata()
        .get(SHAPE_KEY)
        .ok_or_else(|| Error::invalid(&what, format!("a flat column without {SHAPE_KEY}")))?;
    serde_json::from_str(json)
        .map_err(|e| Error::invalid(&what, format!("{SHAPE_KEY} {json:?}: {e}")))
}

/// The tensor of column `index` across `batches`: a view when there is one batch, a
/// concatenation (a copy) when there are several.
pub fn column_across(
    schema: &Schema,
    batches: &[RecordBatch],
    index: usize,
) -> Result<ArrowTensor> {
    let field = schema.field(index);
    match batches {
        [one] => column_tensor(field, one.column(index).as_ref()),
        [] => column_tensor(field, empty_column(field)?.as_ref()),
        _ => {
            let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(index).as_ref()).collect();
            let joined = arrow_select::concat::concat(&parts)?;
            column_tensor(field, joined.as_ref())
        }
    }
}

/// An empty array of `field`'s type, for the types a tensor can be read from (primitive
/// arrays and fixed-size lists of them); other types are refused here, because arrow-array
/// panics on some that a schema can declare (a map whose entries are not a struct).
pub(super) fn empty_column(field: &Field) -> Result<ArrayRef> {
    use arrow_schema::DataType as D;
    let carried = match field.data_type() {
        D::FixedSizeList(child, _) => child.data_type().is_primitive(),
        other => other.is_primitive() || other == &D::Boolean,
    };
    if !carried {
        return Err(Error::UnsupportedType {
            what: format!("field {:?}", field.name()),
            kind: "Arrow type",
            name: field.data_type().to_string(),
        });
    }
    Ok(arrow_array::new_empty_array(field.data_type()))
}

/// Every column of `batches` as a named tensor (see [`column_across`]).
pub fn tensors_of(schema: &Schema, batches: &[RecordBatch]) -> Result<Vec<(String, ArrowTensor)>> {
    (0..schema.fields().len())
        .map(|i| column_across(schema, batches, i).map(|t| (schema.field(i).name().clone(), t)))
        .collect()
}
