//! What the columns of an IPC file or stream hold, read from its headers only.

use arrow_array::{Array, ArrayRef};
use arrow_schema::Field;

use crate::ragged::{is_ragged_field, RaggedTensor};
use crate::tensor::ArrowTensor;

use super::*;

impl IpcData {
    /// What each column holds, from the schema and the batches' headers: nothing is
    /// decompressed or concatenated, and no value is read. A column arrowbridge cannot carry
    /// (strings, decimals, ...) is described with the reason in [`ColumnInfo::error`]; nulls
    /// are found only when the data is read.
    pub fn describe(&self) -> Vec<ColumnInfo> {
        let rows = self.num_rows();
        // One uncompressed batch decodes without reading a value (its buffers are views), and
        // tells exactly which columns are views of the mapping.
        let single = (self.batches.len() == 1 && !self.compressed)
            .then(|| self.batch(0).ok())
            .flatten();
        self.schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, field)| {
                let column = single.as_ref().map(|b| b.column(i).clone());
                self.describe_column(field, rows, column)
            })
            .collect()
    }

    fn describe_column(&self, field: &Field, rows: usize, column: Option<ArrayRef>) -> ColumnInfo {
        let mut info = ColumnInfo {
            name: field.name().clone(),
            arrow_type: field.data_type().to_string(),
            dtype: None,
            shape: Vec::new(),
            nbytes: 0,
            zero_copy: false,
            error: None,
            ragged_shape: None,
        };
        // A bit-packed boolean column is unpacked when read: a copy.
        if field.metadata().get(crate::EXTENSION_NAME_KEY).is_none()
            && field.data_type() == &arrow_schema::DataType::Boolean
        {
            info.dtype = Some(crate::DType::Bool);
            info.shape = vec![rows];
            info.nbytes = rows;
            info.zero_copy = rows == 0;
            return info;
        }
        if is_ragged_field(field) {
            return self.describe_ragged(field, rows, column, info);
        }
        // The type alone gives the dtype and the shape of one row.
        let typed = empty_column(field).and_then(|e| ArrowTensor::from_arrow(field, e.to_data()));
        let t = match typed {
            Ok(t) => t,
            Err(e) => {
                info.error = Some(self.context(e).to_string());
                return info;
            }
        };
        let element = &t.shape()[1..];
        info.dtype = Some(t.dtype());
        info.shape = match field.metadata().get(FORM_KEY).map(String::as_str) {
            Some("element") => element.to_vec(),
            Some("flat") => match flat_shape(field) {
                Ok(shape) => shape,
                Err(e) => {
                    info.error = Some(self.context(e).to_string());
                    return info;
                }
            },
            _ => std::iter::once(rows)
                .chain(element.iter().copied())
                .collect(),
        };
        info.nbytes = info
            .shape
            .iter()
            .try_fold(t.dtype().itemsize(), |acc, &d| acc.checked_mul(d))
            .unwrap_or(usize::MAX);
        info.zero_copy = match column {
            _ if self.batches.is_empty() => true,
            None => false,
            Some(column) => match column_tensor(field, column.as_ref()) {
                Ok(read) => {
                    let start = read.data_ptr() as usize;
                    read.is_empty()
                        || self.mapping.is_some_and(|(base, len)| {
                            start >= base && start.saturating_add(read.nbytes()) <= base + len
                        })
                }
                Err(e) => {
                    info.error = Some(self.context(e).to_string());
                    false
                }
            },
        };
        info
    }
}

impl IpcData {
    /// [`describe`](Self::describe) of an `arrow.variable_shape_tensor` column: its dtype, the
    /// shape `[rows, *uniform_shape]` with the varying sizes `None` in
    /// [`ColumnInfo::ragged_shape`], and (for one uncompressed batch) the values' bytes.
    fn describe_ragged(
        &self,
        field: &Field,
        rows: usize,
        column: Option<ArrayRef>,
        mut info: ColumnInfo,
    ) -> ColumnInfo {
        let empty = arrow_array::new_empty_array(field.data_type()).to_data();
        let typed = match RaggedTensor::from_arrow(field, &empty, true) {
            Ok(t) => t,
            Err(e) => {
                info.error = Some(self.context(e).to_string());
                return info;
            }
        };
        info.dtype = Some(typed.dtype());
        let uniform = typed.uniform_shape().map(<[Option<i32>]>::to_vec);
        let element: Vec<Option<usize>> = match uniform {
            Some(u) => u.iter().map(|d| d.map(|d| d as usize)).collect(),
            None => vec![None; typed.ndim()],
        };
        info.shape = std::iter::once(rows)
            .chain(element.iter().map(|d| d.unwrap_or(0)))
            .collect();
        info.ragged_shape = Some(std::iter::once(Some(rows)).chain(element).collect());
        info.nbytes = 0;
        info.zero_copy = self.batches.is_empty();
        if let Some(column) = column {
            match RaggedTensor::from_arrow(field, &column.to_data(), true) {
                Ok(read) => {
                    info.nbytes = read.nbytes();
                    let start = read.values().as_ptr() as usize;
                    let bit_packed = read.dtype() == crate::DType::Bool;
                    info.zero_copy = read.nbytes() == 0
                        || (!bit_packed
                            && self.mapping.is_some_and(|(base, len)| {
                                start >= base && start.saturating_add(read.nbytes()) <= base + len
                            }));
                }
                Err(e) => info.error = Some(self.context(e).to_string()),
            }
        }
        info
    }
}

/// One column of an IPC file or stream as [`IpcData::describe`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnInfo {
    /// The column's name.
    pub name: String,
    /// Its Arrow type, as Arrow prints it.
    pub arrow_type: String,
    /// The dtype it reads as; `None` when arrowbridge cannot carry it (see `error`).
    pub dtype: Option<crate::DType>,
    /// The shape it reads as (rows first); empty when it cannot be carried.
    pub shape: Vec<usize>,
    /// Bytes of the array it reads as.
    pub nbytes: usize,
    /// Whether reading it gives a view of the memory mapping rather than a copy.
    pub zero_copy: bool,
    /// Why the column cannot be read, when it cannot.
    pub error: Option<String>,
    /// For a ragged column (`arrow.variable_shape_tensor`): `[rows, *sizes]`, a size `None`
    /// where the rows' shapes differ (`shape` then holds 0 there).
    pub ragged_shape: Option<Vec<Option<usize>>>,
}
