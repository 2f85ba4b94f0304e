//! [`RaggedTensor`]: tensors of one dtype and rank but different shapes, held as the canonical
//! `arrow.variable_shape_tensor`, and their `ndarray` views.
//!
//! Storage (apache/arrow `docs/source/format/CanonicalExtensions.rst`):
//! `struct<data: list<T>, shape: fixed_size_list<int32>[ndim]>`, one tensor per row, each
//! row's values in row-major order of its (physical) `shape`. Metadata JSON: optional
//! `dim_names` and `uniform_shape` (both of the physical axes) and `permutation` (logical axis
//! `i` is physical axis `permutation[i]`).

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int32Type;
use arrow_array::{Array, ArrayRef, BooleanArray, StructArray};
use arrow_buffer::{BooleanBuffer, Buffer, MutableBuffer, ScalarBuffer};
use arrow_data::ArrayData;
use arrow_schema::{DataType, Field, Fields};
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use serde::{Deserialize, Serialize};

use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::layout::{inverse, is_permutation, Dims};
use crate::tensor::{
    ArrowTensor, Form, BOOL8_EXTENSION, EXTENSION_METADATA_KEY, EXTENSION_NAME_KEY,
};

/// Name of the canonical variable-shape tensor extension type.
pub const RAGGED_EXTENSION: &str = "arrow.variable_shape_tensor";
/// Name of arrowbridge's complex variable-shape tensor: the storage of
/// `arrow.variable_shape_tensor`, each element two floats (re, im) of the `data` list.
/// (Arrow has no complex type, and pyarrow's `arrow.variable_shape_tensor` refuses a value
/// type that is not a fixed-width primitive.)
pub const COMPLEX_RAGGED_EXTENSION: &str = "arrowbridge.complex_variable_shape_tensor";

/// The parameters of `arrow.variable_shape_tensor`, as the specification spells them. arrow-rs
/// writes `"permutations"` and explicit `null`s; both are read as the specification's form,
/// and only that form is written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaggedMetadata {
    /// Names of the physical axes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim_names: Option<Vec<String>>,
    /// Logical axis `i` is physical axis `permutation[i]`; the identity when absent.
    #[serde(
        default,
        alias = "permutations",
        skip_serializing_if = "Option::is_none"
    )]
    pub permutation: Option<Vec<usize>>,
    /// The size of each physical axis that every row shares, `None` for one that varies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uniform_shape: Option<Vec<Option<i32>>>,
}

impl RaggedMetadata {
    /// Parses the JSON metadata of a variable-shape tensor (an empty string is no metadata)
    /// and checks it against the rank `ndim`.
    ///
    /// ```
    /// use arrowbridge::RaggedMetadata;
    /// let m = RaggedMetadata::parse(r#"{"dim_names":["H","W","C"],"uniform_shape":[400,null,3]}"#, 3)?;
    /// assert_eq!(m.uniform_shape, Some(vec![Some(400), None, Some(3)]));
    /// // arrow-rs's spelling reads as the specification's.
    /// let m = RaggedMetadata::parse(r#"{"dim_names":null,"permutations":[1,0],"uniform_shape":null}"#, 2)?;
    /// assert_eq!(m.permutation, Some(vec![1, 0]));
    /// assert!(RaggedMetadata::parse(r#"{"permutation":[0,0]}"#, 2).is_err());
    /// # Ok::<(), arrowbridge::Error>(())
    /// ```
    pub fn parse(json: &str, ndim: usize) -> Result<Self> {
        if json.trim().is_empty() {
            return Ok(RaggedMetadata::default());
        }
        let meta: RaggedMetadata = serde_json::from_str(json).map_err(|e| {
            Error::invalid("variable_shape_tensor metadata", format!("{e} in {json:?}"))
        })?;
        meta.check(ndim)?;
        Ok(meta)
    }

    /// Checks the parameters against the rank `ndim`.
    pub fn check(&self, ndim: usize) -> Result<()> {
        let what = "variable_shape_tensor metadata";
        if let Some(p) = &self.permutation {
            if p.len() != ndim || !is_permutation(p) {
                return Err(Error::invalid(
                    what,
                    format!("permutation {p:?} is not a permutation of the {ndim} axes"),
                ));
            }
        }
        if let Some(names) = &self.dim_names {
            if names.len() != ndim {
                return Err(Error::shape(
                    what,
                    format!("{} dim_names for {ndim} axes", names.len()),
                ));
            }
        }
        if let Some(uniform) = &self.uniform_shape {
            if uniform.len() != ndim {
                return Err(Error::shape(
                    what,
                    format!(
                        "uniform_shape {uniform:?} has {} axes, not {ndim}",
                        uniform.len()
                    ),
                ));
            }
            if let Some(d) = uniform.iter().flatten().find(|d| **d < 0) {
                return Err(Error::shape(
                    what,
                    format!("uniform_shape {uniform:?} has a negative size {d}"),
                ));
            }
        }
        Ok(())
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("ragged metadata is always serializable")
    }
}

/// A sequence of tensors of one dtype and rank whose shapes differ, in Arrow memory: the
/// canonical `arrow.variable_shape_tensor`.
///
/// Rows are [`ndarray::ArrayView`]s over the Arrow memory ([`row`](Self::row),
/// [`rows`](Self::rows)), the permutation applied. Built from owned arrays (one copy into
/// one buffer, [`from_arrays`](Self::from_arrays)), from a flat buffer of values and the
/// shapes (no copy, [`from_parts`](Self::from_parts)) or from Arrow data (no copy, except
/// bit-packed `bool` values, [`from_arrow`](Self::from_arrow)).
///
/// ```
/// use arrowbridge::RaggedTensor;
/// use ndarray::{array, ArrayD};
///
/// let images: Vec<ArrayD<u8>> = vec![
///     ArrayD::zeros(vec![2, 3, 3]),
///     ArrayD::from_elem(vec![4, 1, 3], 7),
/// ];
/// let ragged = RaggedTensor::from_arrays(images)?;
/// assert_eq!(ragged.len(), 2);
/// assert_eq!(ragged.row::<u8>(1)?.shape(), &[4, 1, 3]);
/// assert_eq!(ragged.uniform_shape(), Some(&[None, None, Some(3)][..]));
/// assert_eq!(ragged.field("images").extension_type_name(), Some("arrow.variable_shape_tensor"));
/// let total: u32 = ragged.rows::<u8>()?.map(|r| r.iter().map(|&v| v as u32).sum::<u32>()).sum();
/// assert_eq!(total, 7 * 12);
/// # Ok::<(), arrowbridge::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct RaggedTensor {
    dtype: DType,
    ndim: usize,
    /// Arrow's list offsets (`len + 1` of them, in storage values: two per complex element),
    /// into `values`.
    offsets: ScalarBuffer<i32>,
    /// The physical shape of each row, `ndim` sizes per row, each checked non-negative.
    shapes: ScalarBuffer<i32>,
    /// Storage values from the list child's first one; `bool` as one byte per value.
    values: Buffer,
    meta: RaggedMetadata,
}

/// Storage values per element (complex numbers are two floats).
fn values_per_element(dtype: DType) -> usize {
    if dtype.is_complex() {
        2
    } else {
        1
    }
}

/// Bytes of one storage value.
fn storage_width(dtype: DType) -> usize {
    dtype.itemsize() / values_per_element(dtype)
}

fn extension_metadata(name: &str, json: String) -> HashMap<String, String> {
    HashMap::from([
        (EXTENSION_NAME_KEY.to_string(), name.to_string()),
        (EXTENSION_METADATA_KEY.to_string(), json),
    ])
}

fn extension_name(field: &Field) -> Option<&str> {
    field.metadata().get(EXTENSION_NAME_KEY).map(String::as_str)
}

/// Whether `field` is a variable-shape tensor (canonical, or arrowbridge's complex one).
pub fn is_ragged_field(field: &Field) -> bool {
    matches!(
        extension_name(field),
        Some(RAGGED_EXTENSION | COMPLEX_RAGGED_EXTENSION)
    )
}

/// The element count of a row of physical shape `shape`, checked.
fn row_count(dtype: DType, shape: &[i32], row: usize, what: &str) -> Result<usize> {
    let mut count = 1usize;
    for (axis, &d) in shape.iter().enumerate() {
        let d = usize::try_from(d).map_err(|_| {
            Error::shape(
                format!("{what} row {row}"),
                format!("shape {shape:?} has a negative size {d} on axis {axis}"),
            )
        })?;
        count = count.checked_mul(d).ok_or_else(|| {
            Error::shape(
                format!("{what} row {row}"),
                format!("shape {shape:?} has more elements than fit in usize"),
            )
        })?;
    }
    if count
        .checked_mul(dtype.itemsize())
        .is_none_or(|b| b > isize::MAX as usize)
    {
        return Err(Error::shape(
            format!("{what} row {row}"),
            format!("shape {shape:?} of {dtype} is too big: its size in bytes overflows isize"),
        ));
    }
    Ok(count)
}

/// The dtype and rank of a ragged list: its first element's.
fn list_type(what: &str, tensors: &[ArrowTensor]) -> Result<(DType, usize)> {
    let first = tensors.first().ok_or_else(|| {
        Error::shape(
            what,
            "an empty list has no dtype or rank; use from_parts for zero rows",
        )
    })?;
    Ok((first.dtype(), first.shape().len()))
}

/// The shape of element `i` of a ragged list (`t`) as int32 sizes, checked against the
/// list's `dtype` and rank.
fn element_shape(
    what: &str,
    i: usize,
    t: &ArrowTensor,
    dtype: DType,
    ndim: usize,
) -> Result<Vec<i32>> {
    if t.dtype() != dtype {
        return Err(Error::Mismatch {
            what: format!("{what} element {i}"),
            expected: dtype.name(),
            got: t.dtype().name(),
        });
    }
    if t.shape().len() != ndim {
        return Err(Error::shape(
            format!("{what} element {i}"),
            format!(
                "has {} dimensions, element 0 has {ndim}; a ragged list holds arrays of one rank",
                t.shape().len()
            ),
        ));
    }
    t.shape()
        .iter()
        .map(|&d| {
            i32::try_from(d).map_err(|_| {
                Error::shape(
                    format!("{what} element {i}"),
                    format!("size {d} of shape {:?} exceeds int32", t.shape()),
                )
            })
        })
        .collect()
}

impl RaggedTensor {
    /// Concatenates tensors of one dtype and rank into one buffer (one copy, each row in the
    /// logical C order of its tensor). Each tensor is taken whole (its [`Form`] is ignored).
    pub fn from_tensors(tensors: &[ArrowTensor], dim_names: Option<Vec<String>>) -> Result<Self> {
        let what = "ragged list";
        let (dtype, ndim) = list_type(what, tensors)?;
        let vpe = values_per_element(dtype);
        let mut offsets = Vec::with_capacity(tensors.len() + 1);
        let mut shapes = Vec::with_capacity(tensors.len() * ndim);
        let mut total = 0usize;
        offsets.push(0i32);
        for (i, t) in tensors.iter().enumerate() {
            shapes.extend(element_shape(what, i, t, dtype, ndim)?);
            total = t
                .len()
                .checked_mul(vpe)
                .and_then(|n| total.checked_add(n))
                .filter(|&n| n <= i32::MAX as usize)
                .ok_or_else(|| {
                    Error::shape(
                        format!("{what} element {i}"),
                        "the elements hold more than 2^31-1 values, the most one Arrow list<T> (32-bit offsets) holds",
                    )
                })?;
            offsets.push(total as i32);
        }
        let width = storage_width(dtype);
        let nbytes = total * width;
        let mut buffer = MutableBuffer::from_len_zeroed(0);
        buffer.try_reserve(nbytes).map_err(|_| Error::OutOfMemory {
            what: what.into(),
            bytes: nbytes as u64,
            reason: "the allocator refused".into(),
        })?;
        // SAFETY: capacity was reserved above; every byte up to `nbytes` is written below
        // before the buffer is read.
        unsafe { buffer.set_len(nbytes) };
        let out = buffer.as_slice_mut();
        for (i, t) in tensors.iter().enumerate() {
            let (start, end) = (offsets[i] as usize * width, offsets[i + 1] as usize * width);
            t.write_c_order(&mut out[start..end]);
        }
        let meta = RaggedMetadata {
            dim_names,
            ..Default::default()
        };
        meta.check(ndim)?;
        let mut ragged = RaggedTensor {
            dtype,
            ndim,
            offsets: ScalarBuffer::from(offsets),
            shapes: ScalarBuffer::from(shapes),
            values: buffer.into(),
            meta,
        };
        ragged.meta.uniform_shape = ragged.detect_uniform_shape();
        Ok(ragged)
    }

    /// The rows of [`from_tensors`](Self::from_tensors) without its copy: one single-row part
    /// per tensor, each a view of the tensor's memory (a tensor that is not in C order is
    /// copied alone), all with the same metadata, `uniform_shape` detected across them. For
    /// writers that send parts as they are: a Flight put frames each part's memory as it is.
    pub fn views_of(tensors: &[ArrowTensor], dim_names: Option<Vec<String>>) -> Result<Vec<Self>> {
        let what = "ragged list";
        let (dtype, ndim) = list_type(what, tensors)?;
        let meta = RaggedMetadata {
            dim_names,
            ..Default::default()
        };
        meta.check(ndim)?;
        let mut uniform: Option<Vec<Option<i32>>> = None;
        let mut parts = Vec::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            let shape = element_shape(what, i, t, dtype, ndim)?;
            match &mut uniform {
                None => uniform = Some(shape.iter().map(|&d| Some(d)).collect()),
                Some(u) => u
                    .iter_mut()
                    .zip(&shape)
                    .filter(|(u, &d)| **u != Some(d))
                    .for_each(|(u, _)| *u = None),
            }
            let in_c_order = t.axis_order().iter().enumerate().all(|(i, &a)| i == a);
            let part = if in_c_order {
                let wide: Vec<i64> = shape.iter().map(|&d| i64::from(d)).collect();
                Self::from_parts(t.clone(), &wide, ndim, meta.clone())
            } else {
                Self::from_tensors(std::slice::from_ref(t), meta.dim_names.clone())
            };
            parts.push(part.map_err(|e| match e {
                Error::Shape { message, .. } => {
                    Error::shape(format!("{what} element {i}"), message)
                }
                e => e,
            })?);
        }
        for part in &mut parts {
            part.meta.uniform_shape = uniform.clone();
        }
        Ok(parts)
    }

    /// Copies owned arrays of one rank into one buffer ([`from_tensors`](Self::from_tensors));
    /// `uniform_shape` is detected.
    pub fn from_arrays<T: Element>(arrays: Vec<ArrayD<T>>) -> Result<Self> {
        let tensors: Vec<ArrowTensor> = arrays
            .into_iter()
            .map(|a| ArrowTensor::from_array(a).as_element())
            .collect();
        if tensors.is_empty() {
            return Self::from_parts(
                ArrowTensor::from_array(
                    ArrayD::<T>::from_shape_vec(IxDyn(&[0]), vec![]).expect("empty"),
                ),
                &[],
                0,
                RaggedMetadata::default(),
            );
        }
        Self::from_tensors(&tensors, None)
    }

    /// Tensors whose values lie one after another in `values` (any shape, read as its
    /// elements in memory order, which must be C order), row `i` of physical shape
    /// `shapes[i * ndim..(i + 1) * ndim]`: no copy of the values (except `bool`, which Arrow
    /// stores bit-packed only when exported). Every value must belong to a row.
    pub fn from_parts(
        values: ArrowTensor,
        shapes: &[i64],
        ndim: usize,
        meta: RaggedMetadata,
    ) -> Result<Self> {
        let what = "variable_shape_tensor";
        meta.check(ndim)?;
        if !values.axis_order().iter().enumerate().all(|(i, &a)| i == a) {
            return Err(Error::shape(
                "values",
                "must be in C order (flat, row after row)",
            ));
        }
        let rows = if ndim == 0 {
            return Err(Error::shape(
                "shapes",
                "zero dimensions: give shapes of shape (n, ndim) with ndim >= 1, or use a plain array",
            ));
        } else if !shapes.len().is_multiple_of(ndim) {
            return Err(Error::shape(
                "shapes",
                format!(
                    "{} sizes are not a whole number of rows of {ndim}",
                    shapes.len()
                ),
            ));
        } else {
            shapes.len() / ndim
        };
        let dtype = values.dtype();
        let vpe = values_per_element(dtype);
        let mut narrow = Vec::with_capacity(shapes.len());
        for (i, row) in shapes.chunks_exact(ndim).enumerate() {
            for (axis, &d) in row.iter().enumerate() {
                narrow.push(i32::try_from(d).map_err(|_| {
                    Error::shape(
                        format!("{what} row {i}"),
                        format!("size {d} on axis {axis} of shape {row:?} is not in 0..2^31"),
                    )
                })?);
            }
        }
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0i32);
        let mut total = 0usize;
        for (i, row) in narrow.chunks_exact(ndim).enumerate() {
            let count = row_count(dtype, row, i, what)?;
            total = count
                .checked_mul(vpe)
                .and_then(|n| total.checked_add(n))
                .filter(|&n| n <= i32::MAX as usize)
                .ok_or_else(|| {
                    Error::shape(
                        format!("{what} row {i}"),
                        "rows 0.. hold more than 2^31-1 values, the most one Arrow list<T> (32-bit offsets) holds",
                    )
                })?;
            offsets.push(total as i32);
        }
        let available = values.len();
        if total / vpe != available {
            return Err(Error::shape(
                what,
                format!(
                    "the shapes of the {rows} rows hold {} elements, values has {available}",
                    total / vpe
                ),
            ));
        }
        if let Some(uniform) = &meta.uniform_shape {
            check_uniform(&narrow, ndim, uniform, what)?;
        }
        Ok(RaggedTensor {
            dtype,
            ndim,
            offsets: ScalarBuffer::from(offsets),
            shapes: ScalarBuffer::from(narrow),
            values: values.into_values(),
            meta,
        })
    }

    /// Reads Arrow data of type `arrow.variable_shape_tensor` (or
    /// `arrowbridge.complex_variable_shape_tensor`) described by `field`, without a copy;
    /// bit-packed `bool` values are unpacked (a copy) only when `allow_copy`.
    ///
    /// Every row is checked: nulls, a negative size, a shape whose element count is not the
    /// row's number of values, a row that contradicts `uniform_shape` are errors naming the
    /// row.
    pub fn from_arrow(field: &Field, data: &ArrayData, allow_copy: bool) -> Result<Self> {
        let what = format!("field {:?}", field.name());
        let ext = extension_name(field);
        if !is_ragged_field(field) {
            return Err(Error::UnsupportedType {
                what,
                kind: "Arrow type",
                name: format!("{} (not a variable_shape_tensor)", field.data_type()),
            });
        }
        if !matches!(data.data_type(), DataType::Struct(_)) {
            return Err(Error::invalid(
                &what,
                format!(
                    "{RAGGED_EXTENSION} needs struct storage, got {}",
                    data.data_type()
                ),
            ));
        }
        data.validate_full()?;
        let storage = StructArray::from(data.clone());
        let column = |name: &str| {
            storage.column_by_name(name).ok_or_else(|| {
                Error::invalid(
                    &what,
                    format!(
                        "{RAGGED_EXTENSION} storage has no field {name:?}: {}",
                        data.data_type()
                    ),
                )
            })
        };
        let n = storage.len();
        if let Some((row, count)) = first_null(storage.nulls(), 0, n) {
            return Err(nulls(&what, format!("row {row} is null"), count));
        }
        let list = column("data")?
            .as_list_opt::<i32>()
            .ok_or_else(|| Error::UnsupportedType {
                what: format!("{what} data"),
                kind: "Arrow type",
                name: format!(
                    "{} (variable_shape_tensor data must be list<T>)",
                    storage
                        .column_by_name("data")
                        .map(|c| c.data_type().to_string())
                        .unwrap_or_default()
                ),
            })?;
        let shape = column("shape")?;
        let ndim = match shape.data_type() {
            DataType::FixedSizeList(item, ndim) if item.data_type() == &DataType::Int32 => {
                *ndim as usize
            }
            other => {
                return Err(Error::invalid(
                    format!("{what} shape"),
                    format!("{other}; fixed_size_list<int32>[ndim] expected"),
                ))
            }
        };
        let shape = shape.as_fixed_size_list();
        let json = field
            .metadata()
            .get(EXTENSION_METADATA_KEY)
            .map(String::as_str)
            .unwrap_or("");
        let meta = RaggedMetadata::parse(json, ndim)?;
        let value_field = match list.data_type() {
            DataType::List(value) => value.clone(),
            _ => unreachable!("a ListArray has a List type"),
        };
        let dtype = match (ext, value_field.data_type()) {
            (Some(COMPLEX_RAGGED_EXTENSION), DataType::Float32) => DType::Complex64,
            (Some(COMPLEX_RAGGED_EXTENSION), DataType::Float64) => DType::Complex128,
            (Some(COMPLEX_RAGGED_EXTENSION), other) => {
                return Err(Error::invalid(
                    &what,
                    format!("{COMPLEX_RAGGED_EXTENSION} of {other}; float32 or float64 expected"),
                ))
            }
            (_, DataType::Boolean) => DType::Bool,
            (_, DataType::Int8) if extension_name(&value_field) == Some(BOOL8_EXTENSION) => {
                DType::Bool
            }
            (_, dt) => {
                if let Some(name) = extension_name(&value_field) {
                    return Err(Error::UnsupportedType {
                        what,
                        kind: "tensor value type",
                        name: name.to_string(),
                    });
                }
                DType::from_arrow(dt, &what)?
            }
        };
        if let Some((row, count)) = first_null(list.nulls(), 0, n) {
            return Err(nulls(&what, format!("row {row} has null data"), count));
        }
        if let Some((row, count)) = first_null(shape.nulls(), 0, n) {
            return Err(nulls(&what, format!("row {row} has a null shape"), count));
        }
        let shape_values = shape
            .values()
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| Error::invalid(format!("{what} shape"), "values are not int32"))?;
        let shape_start = if n == 0 { 0 } else { shape.value_offset_at(0) };
        if let Some((k, count)) = first_null(shape_values.nulls(), shape_start, n * ndim) {
            return Err(nulls(
                &what,
                format!("row {} has a null size on axis {}", k / ndim, k % ndim),
                count,
            ));
        }
        let shapes = shape_values.values().slice(shape_start, n * ndim);
        let offsets = list.offsets().inner().clone();
        let vpe = values_per_element(dtype);
        for i in 0..n {
            let row = &shapes[i * ndim..(i + 1) * ndim];
            let count = row_count(dtype, row, i, &what)?;
            let held = (offsets[i + 1] - offsets[i]) as usize;
            if count.checked_mul(vpe) != Some(held) {
                return Err(Error::shape(
                    format!("{what} row {i}"),
                    format!(
                        "shape {row:?} holds {count} elements of {dtype}, the row has {} (data length {held})",
                        held as f64 / vpe as f64
                    ),
                ));
            }
        }
        if let Some(uniform) = &meta.uniform_shape {
            check_uniform(&shapes, ndim, uniform, &what)?;
        }
        let leaf = list.values().to_data();
        let (first, last) = (offsets[0] as usize, offsets[n] as usize);
        if let Some((k, count)) = first_null(leaf.nulls(), first, last - first) {
            let row = offsets.partition_point(|&o| (o as usize) <= first + k) - 1;
            return Err(nulls(&what, format!("row {row} has a null value"), count));
        }
        let values = if leaf.data_type() == &DataType::Boolean {
            if !allow_copy {
                return Err(Error::CopyRequired {
                    what,
                    reason: "its bool values are bit-packed (as Arrow stores bool); a view needs one byte per value".into(),
                });
            }
            let bits = BooleanBuffer::new(leaf.buffers()[0].clone(), leaf.offset(), leaf.len());
            let bytes: Vec<u8> = bits.iter().map(u8::from).collect();
            Buffer::from_vec(bytes)
        } else {
            let width = storage_width(dtype);
            let buffer = &leaf.buffers()[0];
            let start = leaf.offset() * width;
            let len = leaf.len() * width;
            let address = buffer.as_ptr() as usize + start;
            if len > 0 && !address.is_multiple_of(dtype.alignment()) {
                return Err(Error::Misaligned {
                    what,
                    address,
                    align: dtype.alignment(),
                    misalignment: address % dtype.alignment(),
                });
            }
            buffer.slice_with_length(start, len)
        };
        Ok(RaggedTensor {
            dtype,
            ndim,
            offsets,
            shapes,
            values,
            meta,
        })
    }

    /// The number of rows (tensors).
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The rank of every row.
    pub fn ndim(&self) -> usize {
        self.ndim
    }

    /// The extension parameters.
    pub fn metadata(&self) -> &RaggedMetadata {
        &self.meta
    }

    /// `uniform_shape`, if the data declares it.
    pub fn uniform_shape(&self) -> Option<&[Option<i32>]> {
        self.meta.uniform_shape.as_deref()
    }

    /// The permutation, if not the identity.
    pub fn permutation(&self) -> Option<&[usize]> {
        self.meta.permutation.as_deref()
    }

    /// Row `i`'s physical shape (as stored).
    pub fn physical_shape(&self, i: usize) -> &[i32] {
        &self.shapes[i * self.ndim..(i + 1) * self.ndim]
    }

    /// All rows' physical shapes, `ndim` per row.
    pub fn physical_shapes(&self) -> &[i32] {
        &self.shapes
    }

    /// Row `i`'s logical shape (the permutation applied).
    pub fn row_shape(&self, i: usize) -> Vec<usize> {
        let physical = self.physical_shape(i);
        match &self.meta.permutation {
            Some(p) => p.iter().map(|&a| physical[a] as usize).collect(),
            None => physical.iter().map(|&d| d as usize).collect(),
        }
    }

    /// The largest size of each logical axis over all rows (zeros when there are none).
    pub fn max_shape(&self) -> Vec<usize> {
        let mut max = vec![0usize; self.ndim];
        for i in 0..self.len() {
            for (m, d) in max.iter_mut().zip(self.row_shape(i)) {
                *m = (*m).max(d);
            }
        }
        max
    }

    /// The sizes every row shares on each physical axis (`None` where they differ); `None`
    /// when there are no rows.
    pub fn detect_uniform_shape(&self) -> Option<Vec<Option<i32>>> {
        if self.is_empty() {
            return None;
        }
        let mut uniform: Vec<Option<i32>> =
            self.physical_shape(0).iter().map(|&d| Some(d)).collect();
        for row in (1..self.len()).map(|i| self.physical_shape(i)) {
            for (u, &d) in uniform.iter_mut().zip(row) {
                if *u != Some(d) {
                    *u = None;
                }
            }
        }
        Some(uniform)
    }

    /// The same rows with other parameters (`dim_names`, `permutation`, `uniform_shape`),
    /// checked against the rows.
    pub fn with_metadata(mut self, meta: RaggedMetadata) -> Result<Self> {
        meta.check(self.ndim)?;
        if let Some(uniform) = &meta.uniform_shape {
            check_uniform(&self.shapes, self.ndim, uniform, "variable_shape_tensor")?;
        }
        self.meta = meta;
        Ok(self)
    }

    /// Row `i` as a tensor over the same memory, in element form: its logical shape, and the
    /// axis order the permutation gives.
    pub fn row_tensor(&self, i: usize) -> Result<ArrowTensor> {
        if i >= self.len() {
            return Err(Error::shape(
                "variable_shape_tensor",
                format!("row {i} of {} rows", self.len()),
            ));
        }
        let width = storage_width(self.dtype);
        let (start, end) = (
            self.offsets[i] as usize * width,
            self.offsets[i + 1] as usize * width,
        );
        let buffer = if start == end {
            Buffer::from(MutableBuffer::new(0))
        } else {
            self.values.slice_with_length(start, end - start)
        };
        let shape = self.row_shape(i);
        let order: Dims = match &self.meta.permutation {
            Some(p) => inverse(p),
            None => (0..self.ndim).collect(),
        };
        ArrowTensor::from_buffer(buffer, self.dtype, &shape, &order, Form::Element, None)
    }

    /// A view of row `i` as `T` over the Arrow memory, with the row's logical shape.
    pub fn row<T: Element>(&self, i: usize) -> Result<ArrayViewD<'_, T>> {
        if !T::accepts(self.dtype) {
            return Err(Error::Mismatch {
                what: "variable_shape_tensor".into(),
                expected: T::DTYPE.name(),
                got: self.dtype.name(),
            });
        }
        if i >= self.len() {
            return Err(Error::shape(
                "variable_shape_tensor",
                format!("row {i} of {} rows", self.len()),
            ));
        }
        let physical: Vec<usize> = self.physical_shape(i).iter().map(|&d| d as usize).collect();
        let start = self.offsets[i] as usize * storage_width(self.dtype);
        let ptr = if physical.contains(&0) {
            NonNull::<T>::dangling().as_ptr() as *const T
        } else {
            // SAFETY: `start` is within `values` (the offsets were checked against the
            // list's child when the tensor was made).
            unsafe { self.values.as_ptr().add(start) as *const T }
        };
        // SAFETY: `T` accepts the dtype (checked above), so it has the dtype's size and
        // alignment and every stored bit pattern is a valid `T`; the row's elements are
        // `physical`'s product of values in C order from `ptr`, aligned (the buffer's start
        // was checked and each row starts a whole number of elements later), and the view
        // borrows `self`, which keeps the memory alive.
        let view = unsafe { ArrayViewD::from_shape_ptr(IxDyn(&physical), ptr) };
        Ok(match &self.meta.permutation {
            Some(p) => view.permuted_axes(IxDyn(p)),
            None => view,
        })
    }

    /// Views of every row, in order.
    pub fn rows<T: Element>(&self) -> Result<impl Iterator<Item = ArrayViewD<'_, T>> + '_> {
        if !T::accepts(self.dtype) {
            return Err(Error::Mismatch {
                what: "variable_shape_tensor".into(),
                expected: T::DTYPE.name(),
                got: self.dtype.name(),
            });
        }
        Ok((0..self.len()).map(|i| self.row::<T>(i).expect("dtype and index checked")))
    }

    /// All rows' values as one 1-D tensor over the same memory (each row in its physical C
    /// order, rows one after another).
    pub fn values_tensor(&self) -> Result<ArrowTensor> {
        let width = storage_width(self.dtype);
        let (first, last) = (
            self.offsets[0] as usize * width,
            self.offsets[self.len()] as usize * width,
        );
        let buffer = if first == last {
            Buffer::from(MutableBuffer::new(0))
        } else {
            self.values.slice_with_length(first, last - first)
        };
        let count = (last - first) / self.dtype.itemsize();
        ArrowTensor::from_buffer(buffer, self.dtype, &[count], &[0], Form::Rows, None)
    }

    /// All rows' physical shapes as an `(n, ndim)` int32 tensor over the same memory.
    pub fn shapes_tensor(&self) -> Result<ArrowTensor> {
        let buffer = self.shapes.inner().clone();
        ArrowTensor::from_buffer(
            buffer,
            DType::Int32,
            &[self.len(), self.ndim],
            &[0, 1],
            Form::Rows,
            None,
        )
    }

    /// The same rows with the permutation applied to the memory: each row copied into its
    /// logical C order (no copy when there is no permutation).
    pub fn to_logical_order(&self) -> Result<Self> {
        let Some(perm) = &self.meta.permutation else {
            return Ok(self.clone());
        };
        let tensors = (0..self.len())
            .map(|i| self.row_tensor(i))
            .collect::<Result<Vec<_>>>()?;
        let names = self
            .meta
            .dim_names
            .as_ref()
            .map(|n| perm.iter().map(|&p| n[p].clone()).collect());
        if tensors.is_empty() {
            return Ok(RaggedTensor {
                meta: RaggedMetadata {
                    dim_names: names,
                    ..Default::default()
                },
                ..self.clone()
            });
        }
        Self::from_tensors(&tensors, names)
    }

    /// Several ragged tensors of one dtype and rank as one (a copy of the values).
    pub fn concat(parts: &[RaggedTensor]) -> Result<Self> {
        match parts {
            [] => Err(Error::shape(
                "variable_shape_tensor",
                "nothing to concatenate",
            )),
            [one] => Ok(one.clone()),
            _ => {
                let tensors = parts
                    .iter()
                    .flat_map(|p| (0..p.len()).map(move |i| p.row_tensor(i)))
                    .collect::<Result<Vec<_>>>()?;
                if tensors.is_empty() {
                    return Ok(parts[0].clone());
                }
                let mut out = Self::from_tensors(&tensors, None)?;
                // Rows were written in logical order, so the permutation is gone; names follow.
                let first = &parts[0].meta;
                out.meta.dim_names = first.dim_names.as_ref().map(|n| match &first.permutation {
                    Some(p) => p.iter().map(|&a| n[a].clone()).collect(),
                    None => n.clone(),
                });
                Ok(out)
            }
        }
    }

    /// The Arrow storage: `struct<data: list<T>, shape: fixed_size_list<int32>[ndim]>`.
    pub fn data(&self) -> ArrayData {
        let n = self.len();
        let (value_type, leaf) = self.leaf();
        let list_type = DataType::List(Arc::new(Field::new("item", value_type, true)));
        // SAFETY: the offsets are `n + 1` non-decreasing values within the leaf's length
        // (checked when the tensor was made); no validity buffer.
        let list = unsafe {
            ArrayData::builder(list_type)
                .len(n)
                .add_buffer(self.offsets.inner().clone())
                .add_child_data(leaf)
                .build_unchecked()
        };
        let shape_field = Arc::new(Field::new("item", DataType::Int32, true));
        // SAFETY: `shapes` holds `n * ndim` int32 values.
        let shape_values = unsafe {
            ArrayData::builder(DataType::Int32)
                .len(n * self.ndim)
                .add_buffer(self.shapes.inner().clone())
                .build_unchecked()
        };
        // SAFETY: `n` rows of `ndim` values each.
        let shape = unsafe {
            ArrayData::builder(DataType::FixedSizeList(shape_field, self.ndim as i32))
                .len(n)
                .add_child_data(shape_values)
                .build_unchecked()
        };
        // SAFETY: both children have `n` rows; no validity buffer.
        unsafe {
            ArrayData::builder(DataType::Struct(self.storage_fields()))
                .len(n)
                .add_child_data(list)
                .add_child_data(shape)
                .build_unchecked()
        }
    }

    /// The Arrow array of [`data`](Self::data).
    pub fn array(&self) -> ArrayRef {
        arrow_array::make_array(self.data())
    }

    fn storage_fields(&self) -> Fields {
        let (value_type, _) = self.leaf_type();
        Fields::from(vec![
            Field::new(
                "data",
                DataType::List(Arc::new(Field::new("item", value_type, true))),
                true,
            ),
            Field::new(
                "shape",
                DataType::FixedSizeList(
                    Arc::new(Field::new("item", DataType::Int32, true)),
                    self.ndim as i32,
                ),
                true,
            ),
        ])
    }

    fn leaf_type(&self) -> (DataType, usize) {
        let value_type = match self.dtype {
            DType::Bool => DataType::Boolean,
            other => other.storage_type(),
        };
        (value_type, self.values.len() / storage_width(self.dtype))
    }

    /// The list's child: the values (bool packed into bits, as pyarrow's
    /// `arrow.variable_shape_tensor` takes only fixed-width primitive values).
    fn leaf(&self) -> (DataType, ArrayData) {
        let (value_type, len) = self.leaf_type();
        let data = if self.dtype == DType::Bool {
            let bits = BooleanBuffer::collect_bool(len, |i| self.values.as_slice()[i] != 0);
            BooleanArray::new(bits, None).into_data()
        } else {
            // SAFETY: `values` holds `len` aligned storage values; no validity buffer.
            unsafe {
                ArrayData::builder(value_type.clone())
                    .len(len)
                    .add_buffer(self.values.clone())
                    .build_unchecked()
            }
        };
        (value_type, data)
    }

    /// The Arrow field of this tensor, named `name`, with the extension's name and metadata
    /// in the specification's form.
    pub fn field(&self, name: &str) -> Field {
        let ext = if self.dtype.is_complex() {
            COMPLEX_RAGGED_EXTENSION
        } else {
            RAGGED_EXTENSION
        };
        Field::new(name, DataType::Struct(self.storage_fields()), false)
            .with_metadata(extension_metadata(ext, self.meta.to_json()))
    }

    /// Size of the values in bytes.
    pub fn nbytes(&self) -> usize {
        let width = storage_width(self.dtype);
        (self.offsets[self.len()] - self.offsets[0]) as usize * width
    }

    /// The buffer holding the values (from the list child's first).
    pub fn values(&self) -> &Buffer {
        &self.values
    }
}

/// The index of the first null of `nulls` within `offset..offset + len` (relative to
/// `offset`) and how many nulls there are, if any.
fn first_null(
    nulls: Option<&arrow_buffer::NullBuffer>,
    offset: usize,
    len: usize,
) -> Option<(usize, usize)> {
    let nulls = nulls?;
    let end = offset.saturating_add(len).min(nulls.len());
    let start = offset.min(end);
    let slice = nulls.slice(start, end - start);
    if slice.null_count() == 0 {
        return None;
    }
    let index = (0..slice.len()).find(|&i| slice.is_null(i)).unwrap_or(0);
    Some((index, slice.null_count()))
}

fn nulls(what: &str, first: String, count: usize) -> Error {
    Error::Nulls {
        what: format!("{what} ({first})"),
        count,
    }
}

/// Checks every row of `shapes` (`ndim` sizes each) against `uniform`.
fn check_uniform(shapes: &[i32], ndim: usize, uniform: &[Option<i32>], what: &str) -> Result<()> {
    if ndim == 0 {
        return Ok(());
    }
    for (i, row) in shapes.chunks_exact(ndim).enumerate() {
        for (axis, (&d, u)) in row.iter().zip(uniform).enumerate() {
            if let Some(u) = u {
                if *u != d {
                    return Err(Error::shape(
                        format!("{what} row {i}"),
                        format!(
                            "shape {row:?} has size {d} on axis {axis}, uniform_shape {} says {u}",
                            describe_uniform(uniform)
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn describe_uniform(uniform: &[Option<i32>]) -> String {
    let parts: Vec<String> = uniform
        .iter()
        .map(|u| u.map_or("null".into(), |d| d.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array3};

    fn sample() -> RaggedTensor {
        RaggedTensor::from_arrays(vec![
            array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]].into_dyn(),
            array![[7.0f32], [8.0]].into_dyn(),
            ArrayD::<f32>::zeros(IxDyn(&[0, 4])),
        ])
        .unwrap()
    }

    #[test]
    fn rows_are_views_of_one_buffer_in_order() {
        let r = sample();
        assert_eq!(r.len(), 3);
        assert_eq!(
            r.row::<f32>(0).unwrap(),
            array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]].into_dyn()
        );
        assert_eq!(r.row::<f32>(1).unwrap().shape(), &[2, 1]);
        assert_eq!(r.row::<f32>(2).unwrap().shape(), &[0, 4]);
        let base = r.values().as_ptr() as usize;
        assert_eq!(r.row::<f32>(1).unwrap().as_ptr() as usize, base + 6 * 4);
        assert_eq!(base % 64, 0, "the values buffer is 64-byte aligned");
        assert_eq!(r.uniform_shape(), Some(&[None, None][..]));
        assert!(r.row::<f64>(0).is_err());
        assert!(r.row::<f32>(3).is_err());
    }

    #[test]
    fn arrow_round_trip_keeps_rows_and_memory() {
        let r = sample();
        let field = r.field("x");
        let back = RaggedTensor::from_arrow(&field, &r.data(), false).unwrap();
        assert_eq!(back.values().as_ptr(), r.values().as_ptr());
        for i in 0..3 {
            assert_eq!(back.row::<f32>(i).unwrap(), r.row::<f32>(i).unwrap());
        }
        let json = &field.metadata()[EXTENSION_METADATA_KEY];
        assert_eq!(json, r#"{"uniform_shape":[null,null]}"#);
    }

    #[test]
    fn permutation_gives_logical_views() {
        let values = ArrowTensor::from_array(
            ndarray::Array1::from_iter(0..(2 * 3 + 4 * 5) as i64).into_dyn(),
        );
        let meta = RaggedMetadata {
            permutation: Some(vec![1, 0]),
            dim_names: Some(vec!["a".into(), "b".into()]),
            ..Default::default()
        };
        let r = RaggedTensor::from_parts(values, &[2, 3, 4, 5], 2, meta).unwrap();
        let row = r.row::<i64>(0).unwrap();
        assert_eq!(row.shape(), &[3, 2]);
        assert_eq!(row, array![[0i64, 3], [1, 4], [2, 5]].into_dyn());
        assert_eq!(r.row_shape(1), vec![5, 4]);
        let logical = r.to_logical_order().unwrap();
        assert_eq!(logical.row::<i64>(1).unwrap(), r.row::<i64>(1).unwrap());
        assert_eq!(logical.permutation(), None);
        assert_eq!(
            logical.metadata().dim_names,
            Some(vec!["b".to_string(), "a".to_string()])
        );
    }

    #[test]
    fn bad_shapes_name_the_row() {
        let values = || ArrowTensor::from_array(ndarray::Array1::<f64>::zeros(10).into_dyn());
        let err = RaggedTensor::from_parts(values(), &[2, 2, 3, 3], 2, RaggedMetadata::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("hold 13 elements, values has 10"), "{err}");
        let err = RaggedTensor::from_parts(values(), &[2, 2, -3, 2], 2, RaggedMetadata::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 1") && err.contains("negative"), "{err}");
        let err = RaggedTensor::from_parts(values(), &[5, 1 << 40], 2, RaggedMetadata::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 0"), "{err}");
        let err = RaggedTensor::from_parts(
            values(),
            &[2, 3, 2, 2],
            2,
            RaggedMetadata {
                uniform_shape: Some(vec![Some(2), Some(3)]),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("row 1") && err.contains("uniform_shape"),
            "{err}"
        );
        let err = RaggedTensor::from_parts(
            values(),
            &[2, 5],
            2,
            RaggedMetadata {
                permutation: Some(vec![1, 1]),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a permutation"), "{err}");
    }

    #[test]
    fn arrow_data_with_a_wrong_row_length_is_refused() {
        let r = sample();
        let data = r.data();
        // Row 1 declares shape [2, 1] (2 values); give it [3, 1].
        let mut shapes: Vec<i32> = r.physical_shapes().to_vec();
        shapes[2] = 3;
        let shape_child = data.child_data()[1].clone();
        let values = ArrayData::builder(DataType::Int32)
            .len(shapes.len())
            .add_buffer(Buffer::from_vec(shapes))
            .build()
            .unwrap();
        let shape = shape_child
            .into_builder()
            .child_data(vec![values])
            .build()
            .unwrap();
        let bad = data
            .into_builder()
            .child_data(vec![r.data().child_data()[0].clone(), shape])
            .build()
            .unwrap();
        let err = RaggedTensor::from_arrow(&r.field("x"), &bad, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 1") && err.contains("[3, 1]"), "{err}");
    }

    #[test]
    fn bool_and_complex_round_trip() {
        let bools = |v: Vec<u8>| {
            let n = v.len();
            ArrowTensor::from_array_as(ArrayD::from_shape_vec(IxDyn(&[n]), v).unwrap(), DType::Bool)
                .unwrap()
                .as_element()
        };
        let r = RaggedTensor::from_tensors(&[bools(vec![1, 0, 1]), bools(vec![0])], None).unwrap();
        let data = r.data();
        assert_eq!(
            data.child_data()[0].child_data()[0].data_type(),
            &DataType::Boolean
        );
        assert!(RaggedTensor::from_arrow(&r.field("b"), &data, false).is_err());
        let back = RaggedTensor::from_arrow(&r.field("b"), &data, true).unwrap();
        assert_eq!(back.dtype(), DType::Bool);
        assert_eq!(back.row::<u8>(0).unwrap(), array![1u8, 0, 1].into_dyn());
        let c = RaggedTensor::from_arrays(vec![Array3::from_elem(
            (1, 2, 1),
            num_complex::Complex::new(1.0f64, -2.0),
        )
        .into_dyn()])
        .unwrap();
        let field = c.field("c");
        assert_eq!(field.extension_type_name(), Some(COMPLEX_RAGGED_EXTENSION));
        let back = RaggedTensor::from_arrow(&field, &c.data(), false).unwrap();
        assert_eq!(
            back.row::<num_complex::Complex<f64>>(0).unwrap()[[0, 1, 0]].im,
            -2.0
        );
    }

    #[test]
    fn arrow_rs_metadata_reads_as_the_specification() {
        let m = RaggedMetadata::parse(
            r#"{"dim_names":null,"permutations":null,"uniform_shape":null}"#,
            3,
        )
        .unwrap();
        assert_eq!(m, RaggedMetadata::default());
        assert_eq!(m.to_json(), "{}");
    }
}
