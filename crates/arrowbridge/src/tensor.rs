//! [`ArrowTensor`]: an n-dimensional array held in Arrow memory, and its `ndarray` views.

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::Arc;

use arrow_array::{make_array, Array, ArrayRef, BooleanArray};
use arrow_buffer::Buffer;
use arrow_data::ArrayData;
use arrow_schema::{DataType, Field, FieldRef};
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use serde::{Deserialize, Serialize};

use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::layout::{c_order, inverse, is_c_order, is_permutation, Dims};
use crate::view::DynView;

/// Name of the canonical fixed-shape tensor extension type.
pub const TENSOR_EXTENSION: &str = "arrow.fixed_shape_tensor";
/// Name of the canonical 8-bit boolean extension type.
pub const BOOL8_EXTENSION: &str = "arrow.bool8";
/// Name of arrowbridge's complex tensor extension type: the layout of
/// `arrow.fixed_shape_tensor`, each element stored as two floats (re, im).
pub const COMPLEX_EXTENSION: &str = "arrowbridge.complex_tensor";
/// Field metadata key holding an extension type's name.
pub const EXTENSION_NAME_KEY: &str = "ARROW:extension:name";
/// Field metadata key holding an extension type's serialized parameters.
pub const EXTENSION_METADATA_KEY: &str = "ARROW:extension:metadata";

/// How an [`ArrowTensor`]'s leading axis maps onto Arrow rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Axis 0 is the Arrow array's rows; every row is one element of the remaining shape.
    /// A table column holds arrays in this form.
    Rows,
    /// The Arrow array has one row holding the whole array. Any axis order of a contiguous
    /// block (Fortran order included) fits, because axis 0 need not be outermost.
    Element,
}

/// The parameters of `arrow.fixed_shape_tensor` (and `arrowbridge.complex_tensor`), exactly
/// as the Arrow specification spells them: `shape` is the physical shape, and logical axis
/// `i` is physical axis `permutation[i]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorMetadata {
    /// The physical shape of one element.
    pub shape: Vec<usize>,
    /// Names of the physical axes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim_names: Option<Vec<String>>,
    /// Logical axis `i` is physical axis `permutation[i]`; the identity when absent.
    /// arrow-rs 60 writes the key as `"permutations"` (same meaning); it is read as this one.
    #[serde(
        default,
        alias = "permutations",
        skip_serializing_if = "Option::is_none"
    )]
    pub permutation: Option<Vec<usize>>,
}

impl TensorMetadata {
    /// Parses and checks the JSON metadata of a tensor extension type.
    ///
    /// ```
    /// use arrowbridge::TensorMetadata;
    /// let m = TensorMetadata::parse(r#"{"shape":[100,200,500],"permutation":[2,0,1]}"#).unwrap();
    /// assert_eq!(m.logical_shape(), vec![500, 100, 200]);
    /// // arrow-rs 60's spelling ("permutations", a null dim_names) reads as the specification's.
    /// let m = TensorMetadata::parse(r#"{"shape":[2,3],"dim_names":null,"permutations":[1,0]}"#).unwrap();
    /// assert_eq!(m.permutation, Some(vec![1, 0]));
    /// assert!(TensorMetadata::parse(r#"{"shape":[2],"permutatoin":[0]}"#).is_err());
    /// ```
    pub fn parse(json: &str) -> Result<Self> {
        let meta: TensorMetadata = serde_json::from_str(json)
            .map_err(|e| Error::invalid("tensor extension metadata", format!("{e} in {json:?}")))?;
        let n = meta.shape.len();
        if let Some(p) = &meta.permutation {
            if p.len() != n || !is_permutation(p) {
                return Err(Error::invalid(
                    "tensor extension metadata",
                    format!(
                        "permutation {p:?} is not a permutation of the {n} axes of shape {:?}",
                        meta.shape
                    ),
                ));
            }
        }
        if let Some(names) = &meta.dim_names {
            if names.len() != n {
                return Err(Error::invalid(
                    "tensor extension metadata",
                    format!("{} dim_names for {n} axes", names.len()),
                ));
            }
        }
        Ok(meta)
    }

    /// The shape the tensor has for its user: physical axes taken in `permutation` order.
    pub fn logical_shape(&self) -> Vec<usize> {
        match &self.permutation {
            Some(p) => p.iter().map(|&i| self.shape[i]).collect(),
            None => self.shape.clone(),
        }
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("tensor metadata is always serializable")
    }
}

/// An n-dimensional array whose elements live in an Arrow array.
///
/// It pairs Arrow data (a primitive array for 1-D, a `fixed_size_list` for tensors) with the
/// logical shape and axis order that the Arrow type and its extension metadata describe.
/// [`view`](Self::view) hands out an `ndarray` view over the very same memory, and
/// [`from_array`](Self::from_array) moves an owned `ndarray` into Arrow memory without a copy.
///
/// ```
/// use arrowbridge::ArrowTensor;
/// use ndarray::{array, IxDyn};
///
/// let a = array![[1.0f64, 2.0, 3.0], [4.0, 5.0, 6.0]].into_dyn();
/// let first = a.as_ptr();
/// let tensor = ArrowTensor::from_array(a);
/// // A canonical `arrow.fixed_shape_tensor` with two rows of shape [3]...
/// assert_eq!(tensor.field("x").metadata()["ARROW:extension:name"], "arrow.fixed_shape_tensor");
/// // ...that views the memory the ndarray owned.
/// let view = tensor.view::<f64>().unwrap();
/// assert_eq!(view.shape(), &[2, 3]);
/// assert_eq!(view.as_ptr(), first);
/// ```
#[derive(Debug)]
pub struct ArrowTensor {
    dtype: DType,
    shape: Dims,
    order: Dims,
    form: Form,
    dim_names: Option<Arc<[String]>>,
    /// The elements, starting at the first one in memory, in physical (`order`) C order.
    values: Buffer,
}

impl Clone for ArrowTensor {
    /// Another handle on the same memory (no copy of the elements). Written out because
    /// SmallVec's own `clone` goes element by element.
    fn clone(&self) -> Self {
        ArrowTensor {
            dtype: self.dtype,
            shape: Dims::from_slice(&self.shape),
            order: Dims::from_slice(&self.order),
            form: self.form,
            dim_names: self.dim_names.clone(),
            values: self.values.clone(),
        }
    }
}

/// The number of elements of `shape`, checked as NumPy checks a shape: the product of its
/// nonzero axes, times the itemsize, must fit in an `isize` (so a shape like `[0, 2**63]`,
/// which holds no element, is refused too: no array of that shape can exist).
pub(crate) fn element_count(dtype: DType, shape: &[usize], what: &str) -> Result<usize> {
    let too_big = || {
        Error::invalid(
            what,
            format!("shape {shape:?} of {dtype} is too big: its size in bytes overflows isize"),
        )
    };
    let (mut nonzero, mut empty) = (1usize, false);
    for &d in shape {
        if d == 0 {
            empty = true;
        } else {
            nonzero = nonzero.checked_mul(d).ok_or_else(too_big)?;
        }
    }
    if nonzero
        .checked_mul(dtype.itemsize())
        .is_none_or(|bytes| bytes > isize::MAX as usize)
    {
        return Err(too_big());
    }
    Ok(if empty { 0 } else { nonzero })
}

fn extension_metadata(name: &str, json: String) -> HashMap<String, String> {
    HashMap::from([
        (EXTENSION_NAME_KEY.to_string(), name.to_string()),
        (EXTENSION_METADATA_KEY.to_string(), json),
    ])
}

fn value_field(dtype: DType) -> Field {
    let field = Field::new("item", dtype.storage_type(), true);
    if dtype == DType::Bool {
        field.with_metadata(extension_metadata(BOOL8_EXTENSION, String::new()))
    } else {
        field
    }
}

fn extension_name(field: &Field) -> Option<&str> {
    field.metadata().get(EXTENSION_NAME_KEY).map(String::as_str)
}

impl ArrowTensor {
    /// Wraps a contiguous block of memory, given as an Arrow [`Buffer`], without copying it.
    ///
    /// `buffer` starts at the first element in memory and holds the `shape`'s elements with
    /// axis `order[0]` outermost and `order[last]` innermost (C order is `0, 1, …`).
    /// [`Form::Rows`] needs `order[0] == 0`. `dim_names`, if given, name the element axes:
    /// axes `1..` in row form, all axes in element form.
    pub fn from_buffer(
        buffer: Buffer,
        dtype: DType,
        shape: &[usize],
        order: &[usize],
        form: Form,
        dim_names: Option<Vec<String>>,
    ) -> Result<Self> {
        let what = "array";
        let ndim = shape.len();
        if order.len() != ndim || !is_permutation(order) {
            return Err(Error::invalid(
                what,
                format!("axis order {order:?} for shape {shape:?}"),
            ));
        }
        let form = if ndim == 0 { Form::Element } else { form };
        if form == Form::Rows && order[0] != 0 {
            return Err(Error::invalid(what, "row form needs axis 0 outermost"));
        }
        let element_axes = if form == Form::Rows { ndim - 1 } else { ndim };
        if let Some(names) = &dim_names {
            if names.len() != element_axes {
                return Err(Error::shape(
                    "dim_names",
                    format!(
                        "{} names given for {element_axes} element axes of shape {shape:?}",
                        names.len()
                    ),
                ));
            }
        }
        let count = element_count(dtype, shape, what)?;
        let nbytes = count * dtype.itemsize();
        if buffer.len() < nbytes {
            return Err(Error::invalid(
                what,
                format!("buffer of {} bytes holds fewer than the {nbytes} bytes of shape {shape:?} {dtype}", buffer.len()),
            ));
        }
        if count > 0 && !(buffer.as_ptr() as usize).is_multiple_of(dtype.alignment()) {
            return Err(misaligned(
                what,
                buffer.as_ptr() as usize,
                dtype.alignment(),
            ));
        }
        let values = if nbytes == 0 {
            Buffer::from(arrow_buffer::MutableBuffer::new(0))
        } else if buffer.len() == nbytes {
            buffer
        } else {
            buffer.slice_with_length(0, nbytes)
        };
        let tensor = ArrowTensor {
            dtype,
            shape: Dims::from_slice(shape),
            order: Dims::from_slice(order),
            form,
            dim_names: dim_names.map(Arc::from),
            values,
        };
        // One row holds at most `count` elements of at most two values: when that fits in an
        // i32, so does the Arrow list size, and checking it again would only cost time.
        if count == 0 || count > (i32::MAX / 2) as usize {
            tensor.list_size()?;
        }
        Ok(tensor)
    }

    /// Moves an owned `ndarray` into Arrow memory, in row form. Standard-layout (C order)
    /// arrays move without a copy; others are first copied into C order.
    pub fn from_array<T: Element>(array: ArrayD<T>) -> Self {
        Self::from_array_as(array, T::DTYPE).expect("an Element type accepts its own dtype")
    }

    /// Like [`from_array`](Self::from_array), with a dtype that `T` carries: `i64` data as
    /// `datetime64`/`timedelta64`, `u8` data as `bool` (each byte must be 0 or 1).
    pub fn from_array_as<T: Element>(array: ArrayD<T>, dtype: DType) -> Result<Self> {
        if !T::accepts(dtype) {
            return Err(Error::invalid(
                "array",
                format!("{} data cannot be stored as {dtype}", T::DTYPE),
            ));
        }
        let array = if array.is_standard_layout() {
            array
        } else {
            array.as_standard_layout().into_owned()
        };
        // The array is in memory, so its shape needs no overflow check and its elements are
        // aligned: the tensor is built directly, not through `from_buffer`'s validation.
        let shape = Dims::from_slice(array.shape());
        let nbytes = array.len() * std::mem::size_of::<T>();
        let (vec, offset) = array.into_raw_vec_and_offset();
        let start = offset.unwrap_or(0).min(vec.len()) * std::mem::size_of::<T>();
        let buffer = T::into_buffer(vec);
        let values = if start == 0 && buffer.len() == nbytes {
            buffer
        } else {
            buffer.slice_with_length(start, nbytes)
        };
        let ndim = shape.len();
        let tensor = ArrowTensor {
            dtype,
            order: c_order(ndim),
            form: if ndim == 0 { Form::Element } else { Form::Rows },
            shape,
            dim_names: None,
            values,
        };
        if nbytes == 0 || nbytes / dtype.itemsize() > (i32::MAX / 2) as usize {
            tensor.list_size()?;
        }
        Ok(tensor)
    }

    /// Reads an Arrow array and the field that describes it (its extension type lives in the
    /// field's metadata) as a tensor in row form, viewing the same memory.
    ///
    /// Accepted: primitive arrays of the dtypes of [`DType`], `arrow.bool8`,
    /// `arrow.fixed_shape_tensor`, `arrowbridge.complex_tensor`, and plain
    /// `fixed_size_list<primitive>` (read as 2-D). Nulls, misaligned buffers and inconsistent
    /// metadata are errors.
    pub fn from_arrow(field: &Field, data: ArrayData) -> Result<Self> {
        let what = format!("field {:?}", field.name());
        data.validate()?;
        if data.null_count() > 0 {
            return Err(Error::Nulls {
                what,
                count: data.null_count(),
            });
        }
        let ext = extension_name(field);
        let tensor = match (ext, data.data_type()) {
            (Some(BOOL8_EXTENSION), DataType::Int8) => Self::plain(DType::Bool, &data, &what)?,
            (None, DataType::FixedSizeList(child, size)) => {
                let dtype = Self::value_dtype(child, &what)?;
                let meta = TensorMetadata {
                    shape: vec![*size as usize],
                    ..Default::default()
                };
                Self::tensor(dtype, &meta, &data, &what)?
            }
            (Some(name @ (TENSOR_EXTENSION | COMPLEX_EXTENSION)), DataType::FixedSizeList(child, _)) => {
                let json = field.metadata().get(EXTENSION_METADATA_KEY).ok_or_else(|| {
                    Error::invalid(&what, format!("{name} without {EXTENSION_METADATA_KEY}"))
                })?;
                let meta = TensorMetadata::parse(json)?;
                let dtype = match (name, child.data_type()) {
                    (COMPLEX_EXTENSION, DataType::Float32) => DType::Complex64,
                    (COMPLEX_EXTENSION, DataType::Float64) => DType::Complex128,
                    (COMPLEX_EXTENSION, other) => {
                        return Err(Error::invalid(&what, format!("{name} of {other}; float32 or float64 expected")))
                    }
                    _ => Self::value_dtype(child, &what)?,
                };
                Self::tensor(dtype, &meta, &data, &what)?
            }
            (None, DataType::Boolean) => {
                return Err(Error::UnsupportedType {
                    what,
                    kind: "Arrow type",
                    name: "boolean (bit-packed; a view needs one byte per value: use arrow.bool8 or allow a copy)".into(),
                })
            }
            (None, dt) => Self::plain(DType::from_arrow(dt, &what)?, &data, &what)?,
            (Some(name), dt) => {
                return Err(Error::UnsupportedType {
                    what,
                    kind: "extension type",
                    name: format!("{name} (storage {dt})"),
                })
            }
        };
        Ok(tensor)
    }

    /// Reads an arbitrary Arrow array, copying where a view cannot be had: a bit-packed
    /// `boolean` array is unpacked into `arrow.bool8`. Everything else is as
    /// [`from_arrow`](Self::from_arrow).
    pub fn from_arrow_unpacking(field: &Field, data: ArrayData) -> Result<Self> {
        if extension_name(field).is_none() && data.data_type() == &DataType::Boolean {
            data.validate()?;
            let bools = BooleanArray::from(data);
            if bools.null_count() > 0 {
                return Err(Error::Nulls {
                    what: format!("field {:?}", field.name()),
                    count: bools.null_count(),
                });
            }
            let bytes: Vec<u8> = bools.values().iter().map(u8::from).collect();
            let n = bytes.len();
            return Self::from_array_as(
                ArrayD::from_shape_vec(IxDyn(&[n]), bytes).expect("length matches"),
                DType::Bool,
            );
        }
        Self::from_arrow(field, data)
    }

    fn value_dtype(child: &Field, what: &str) -> Result<DType> {
        if child.data_type() == &DataType::Int8 && extension_name(child) == Some(BOOL8_EXTENSION) {
            Ok(DType::Bool)
        } else if let Some(name) = extension_name(child) {
            Err(Error::UnsupportedType {
                what: what.to_string(),
                kind: "tensor value type",
                name: name.to_string(),
            })
        } else {
            DType::from_arrow(child.data_type(), what)
        }
    }

    /// The values buffer of primitive `leaf` data, from value `start` for `count` elements
    /// of `dtype`; checks length and alignment.
    fn leaf_values(
        leaf: &ArrayData,
        start: usize,
        dtype: DType,
        count: usize,
        what: &str,
    ) -> Result<Buffer> {
        let value_size = dtype
            .storage_type()
            .primitive_width()
            .expect("primitive storage");
        let buffer = leaf
            .buffers()
            .first()
            .ok_or_else(|| Error::invalid(what, "no values buffer"))?;
        let offset = start
            .checked_mul(value_size)
            .ok_or_else(|| Error::invalid(what, "offset overflows"))?;
        let nbytes = count.checked_mul(dtype.itemsize()).ok_or_else(|| {
            Error::invalid(
                what,
                format!("{count} values of {dtype} overflow usize bytes"),
            )
        })?;
        if offset
            .checked_add(nbytes)
            .is_none_or(|end| end > buffer.len())
        {
            return Err(Error::invalid(
                what,
                format!(
                    "{nbytes} bytes of data expected at byte offset {offset}, the buffer holds {}",
                    buffer.len()
                ),
            ));
        }
        let address = buffer.as_ptr() as usize + offset;
        if nbytes > 0 && !address.is_multiple_of(dtype.alignment()) {
            return Err(misaligned(what, address, dtype.alignment()));
        }
        if nbytes == 0 {
            // An empty buffer may sit anywhere; give views an aligned one.
            return Ok(Buffer::from(arrow_buffer::MutableBuffer::new(0)));
        }
        Ok(buffer.slice_with_length(offset, nbytes))
    }

    fn plain(dtype: DType, data: &ArrayData, what: &str) -> Result<Self> {
        Ok(ArrowTensor {
            dtype,
            shape: Dims::from_slice(&[data.len()]),
            order: Dims::from_slice(&[0]),
            form: Form::Rows,
            dim_names: None,
            values: Self::leaf_values(data, data.offset(), dtype, data.len(), what)?,
        })
    }

    fn tensor(dtype: DType, meta: &TensorMetadata, data: &ArrayData, what: &str) -> Result<Self> {
        let DataType::FixedSizeList(_, size) = data.data_type() else {
            unreachable!("callers match on FixedSizeList")
        };
        let size = *size as usize;
        let expected = values_per_element(dtype, &meta.shape)?;
        if size != expected {
            return Err(Error::invalid(
                what,
                format!("fixed_size_list of {size} values cannot hold a tensor of shape {:?} {dtype} ({expected} values)", meta.shape),
            ));
        }
        let child = &data.child_data()[0];
        // Only the values of the rows viewed count: a slice may leave null rows out.
        let viewed = data
            .offset()
            .checked_mul(size)
            .zip(data.len().checked_mul(size))
            .ok_or_else(|| Error::invalid(what, "the number of values overflows usize"))?;
        let nulls = match child.nulls() {
            Some(nulls)
                if viewed
                    .0
                    .checked_add(viewed.1)
                    .is_some_and(|end| end <= nulls.len()) =>
            {
                nulls.slice(viewed.0, viewed.1).null_count()
            }
            Some(nulls) => nulls.null_count(),
            None => 0,
        };
        if nulls > 0 {
            return Err(Error::Nulls {
                what: format!("{what} (tensor values)"),
                count: nulls,
            });
        }
        let n = meta.shape.len();
        let perm = meta.permutation.clone().unwrap_or_else(|| (0..n).collect());
        // Logical axis i + 1 is physical axis perm[i] + 1; physical axis 0 is the rows.
        let mut order: Dims = smallvec::smallvec![0; n + 1];
        for (logical, &physical) in perm.iter().enumerate() {
            order[physical + 1] = logical + 1;
        }
        let mut shape = Dims::from_slice(&[data.len()]);
        shape.extend(meta.logical_shape());
        let dim_names = meta
            .dim_names
            .as_ref()
            .map(|names| perm.iter().map(|&p| names[p].clone()).collect());
        let count = element_count(dtype, &shape, what)?;
        let start = child
            .offset()
            .checked_add(viewed.0)
            .ok_or_else(|| Error::invalid(what, "the values' offset overflows usize"))?;
        Ok(ArrowTensor {
            dtype,
            shape,
            order,
            form: Form::Rows,
            dim_names,
            values: Self::leaf_values(child, start, dtype, count, what)?,
        })
    }

    /// Reads a one-row tensor as the whole array it holds ([`Form::Element`]): the shape
    /// loses its leading 1 and the element's axis order may be any permutation.
    pub fn into_element(self) -> Result<Self> {
        if self.form == Form::Element {
            return Ok(self);
        }
        if self.shape[0] != 1 {
            return Err(Error::shape(
                "element form",
                format!("needs exactly one row, the array has {}", self.shape[0]),
            ));
        }
        let order = self.order[1..].iter().map(|a| a - 1).collect();
        Ok(ArrowTensor {
            shape: Dims::from_slice(&self.shape[1..]),
            order,
            form: Form::Element,
            ..self
        })
    }

    /// The same memory described as one whole element ([`Form::Element`]).
    pub fn as_element(&self) -> ArrowTensor {
        ArrowTensor {
            form: Form::Element,
            dim_names: None,
            ..self.clone()
        }
    }

    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The logical shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The physical order of the axes in memory, outermost first.
    pub fn axis_order(&self) -> &[usize] {
        &self.order
    }

    /// How axis 0 maps onto Arrow rows.
    pub fn form(&self) -> Form {
        self.form
    }

    /// Names of the element axes, if the tensor has them.
    pub fn dim_names(&self) -> Option<&[String]> {
        self.dim_names.as_deref()
    }

    /// The buffer holding the elements, from the first one in memory.
    pub fn values(&self) -> &Buffer {
        &self.values
    }

    /// The number of values in one Arrow row when the storage is a `fixed_size_list`;
    /// `None` for a plain primitive array.
    fn list_size(&self) -> Result<Option<i32>> {
        let ndim = self.shape.len();
        let plain = !self.dtype.is_complex()
            && match self.form {
                Form::Rows => ndim == 1,
                Form::Element => ndim == 0,
            };
        if plain {
            return Ok(None);
        }
        let element = match self.form {
            Form::Rows => &self.shape[1..],
            Form::Element => &self.shape[..],
        };
        let size = values_per_element(self.dtype, element)?;
        i32::try_from(size).map(Some).map_err(|_| {
            Error::shape(
                "array",
                format!("one Arrow row of shape {element:?} would hold {size} values; fixed_size_list holds at most 2^31-1"),
            )
        })
    }

    /// The Arrow data: a primitive array, or a `fixed_size_list` whose rows are the elements.
    pub fn data(&self) -> ArrayData {
        let values = self.values.len()
            / self
                .dtype
                .storage_type()
                .primitive_width()
                .expect("primitive storage");
        // SAFETY: `values` holds exactly `values` storage values, aligned (checked when the
        // tensor was made); no validity buffer and no offset.
        let leaf = unsafe {
            ArrayData::builder(self.dtype.storage_type())
                .len(values)
                .add_buffer(self.values.clone())
                .build_unchecked()
        };
        match self.list_size().expect("checked when the tensor was made") {
            None => leaf,
            Some(size) => {
                let rows = match self.form {
                    Form::Rows => self.shape[0],
                    Form::Element => 1,
                };
                // SAFETY: `rows * size` is the child's length (the product of the shape,
                // times two for complex), and the list has no validity buffer.
                unsafe {
                    ArrayData::builder(DataType::FixedSizeList(
                        Arc::new(value_field(self.dtype)),
                        size,
                    ))
                    .len(rows)
                    .add_child_data(leaf)
                    .build_unchecked()
                }
            }
        }
    }

    /// The Arrow array.
    pub fn array(&self) -> ArrayRef {
        make_array(self.data())
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size of the elements in bytes.
    pub fn nbytes(&self) -> usize {
        self.values.len()
    }

    /// The Arrow field that describes this tensor: its type and, for tensors and `bool`,
    /// the extension metadata, exactly as the canonical extension types specify.
    pub fn field(&self, name: &str) -> Field {
        let storage = match self.list_size().expect("checked when the tensor was made") {
            Some(size) => DataType::FixedSizeList(Arc::new(value_field(self.dtype)), size),
            None => self.dtype.storage_type(),
        };
        let field = Field::new(name, storage, false);
        match field.data_type() {
            DataType::FixedSizeList(..) => {
                let ext = if self.dtype.is_complex() {
                    COMPLEX_EXTENSION
                } else {
                    TENSOR_EXTENSION
                };
                let json = self.tensor_metadata().to_json();
                field.with_metadata(extension_metadata(ext, json))
            }
            _ if self.dtype == DType::Bool => {
                field.with_metadata(extension_metadata(BOOL8_EXTENSION, String::new()))
            }
            _ => field,
        }
    }

    /// [`field`](Self::field) behind an `Arc`.
    pub fn field_ref(&self, name: &str) -> FieldRef {
        Arc::new(self.field(name))
    }

    /// The extension parameters of the tensor's Arrow type.
    pub fn tensor_metadata(&self) -> TensorMetadata {
        let skip = usize::from(self.form == Form::Rows);
        let element_order: Dims = self.order[skip..].iter().map(|a| a - skip).collect();
        let shape = element_order
            .iter()
            .map(|&a| self.shape[a + skip])
            .collect();
        let perm = inverse(&element_order);
        let identity = perm.iter().enumerate().all(|(i, &p)| i == p);
        TensorMetadata {
            shape,
            dim_names: self
                .dim_names
                .as_ref()
                .map(|names| element_order.iter().map(|&a| names[a].clone()).collect()),
            permutation: (!identity).then(|| perm.to_vec()),
        }
    }

    /// Address of the first element in memory (for tests and for sharing with other
    /// libraries); meaningless for an empty tensor.
    pub fn data_ptr(&self) -> *const u8 {
        self.values.as_ptr()
    }

    /// Strides in bytes of each logical axis.
    pub fn byte_strides(&self) -> Vec<isize> {
        let mut strides = vec![0isize; self.shape.len()];
        self.byte_strides_into(&mut strides);
        strides
    }

    /// Writes the strides in bytes of each logical axis into `strides[..ndim]`.
    pub fn byte_strides_into(&self, strides: &mut [isize]) {
        let mut acc = self.dtype.itemsize() as isize;
        for &axis in self.order.iter().rev() {
            strides[axis] = acc;
            acc *= self.shape[axis] as isize;
        }
    }

    /// The buffer of the elements (see [`values`](Self::values)), without the tensor.
    pub fn into_values(self) -> Buffer {
        self.values
    }

    /// A view of the elements as `T`, sharing the Arrow memory.
    ///
    /// Fails with [`Error::DType`] if the data is not of a dtype `T` accepts.
    pub fn view<T: Element>(&self) -> Result<ArrayViewD<'_, T>> {
        if !T::accepts(self.dtype) {
            return Err(Error::DType {
                kernel: "view".into(),
                arg: 0,
                expected: T::DTYPE.name(),
                got: self.dtype.name(),
            });
        }
        // SAFETY: `T` accepts the dtype, so `T` has the dtype's size and alignment and every
        // bit pattern of the stored values is a valid `T` (bool is viewed as u8). `values`
        // was checked at construction to hold `len()` elements, aligned for the dtype, and
        // it is borrowed from `self`, which keeps the memory alive.
        Ok(unsafe { self.view_unchecked::<T>() })
    }

    /// # Safety
    /// `T` must accept `self.dtype`.
    unsafe fn view_unchecked<T: Element>(&self) -> ArrayViewD<'_, T> {
        let ptr = if self.is_empty() {
            NonNull::<T>::dangling().as_ptr() as *const T
        } else {
            self.values.as_ptr() as *const T
        };
        if is_c_order(&self.order) {
            // SAFETY: see `view`; the shape in C order describes the contiguous block.
            return unsafe { ArrayViewD::from_shape_ptr(IxDyn(&self.shape), ptr) };
        }
        let physical: Dims = self.order.iter().map(|&a| self.shape[a]).collect();
        // SAFETY: see `view`; the physical shape in C order describes the contiguous block.
        let view = unsafe { ArrayViewD::from_shape_ptr(IxDyn(&physical), ptr) };
        view.permuted_axes(IxDyn(&inverse(&self.order)))
    }

    /// Copies the elements in logical C order into `out`, which holds exactly
    /// [`nbytes`](Self::nbytes) bytes.
    pub fn write_c_order(&self, out: &mut [u8]) {
        assert_eq!(out.len(), self.nbytes(), "out holds the tensor's bytes");
        let identity = is_c_order(&self.order);
        if identity || self.is_empty() {
            out.copy_from_slice(self.values.as_slice());
            return;
        }
        /// Copies with elements seen as `E`, a plain type of the itemsize's width.
        fn copy<E: Copy>(tensor: &ArrowTensor, out: &mut [u8]) {
            let physical: Dims = tensor.order.iter().map(|&a| tensor.shape[a]).collect();
            // SAFETY: the values hold the physical shape's elements in C order, aligned for
            // the dtype; `E` has the itemsize's width and an alignment the dtype's covers,
            // and any bit pattern is a valid `E`. The view borrows `tensor`.
            let view = unsafe {
                ArrayViewD::from_shape_ptr(IxDyn(&physical), tensor.values.as_ptr() as *const E)
            }
            .permuted_axes(IxDyn(&inverse(&tensor.order)));
            let size = std::mem::size_of::<E>();
            for (chunk, value) in out.chunks_exact_mut(size).zip(view.iter()) {
                // SAFETY: `chunk` has `size` bytes; an unaligned write needs no alignment.
                unsafe { std::ptr::write_unaligned(chunk.as_mut_ptr() as *mut E, *value) };
            }
        }
        match self.dtype.itemsize() {
            1 => copy::<u8>(self, out),
            2 => copy::<u16>(self, out),
            4 => copy::<u32>(self, out),
            8 => copy::<u64>(self, out),
            16 => copy::<[u64; 2]>(self, out),
            other => unreachable!("no dtype has an itemsize of {other}"),
        }
    }

    /// The first elements in memory of a tensor whose elements are in C order, seen as an
    /// array of `shape` (a view, no copy): the inverse of laying an array out flat.
    pub fn reshaped(&self, shape: &[usize]) -> Result<Self> {
        let what = "reshape";
        let identity = is_c_order(&self.order);
        let count = element_count(self.dtype, shape, what)?;
        if !identity || count > self.len() {
            return Err(Error::shape(
                what,
                format!(
                    "cannot view {} elements of shape {:?} as shape {shape:?}",
                    self.len(),
                    self.shape()
                ),
            ));
        }
        let order = c_order(shape.len());
        Self::from_buffer(
            self.values.clone(),
            self.dtype,
            shape,
            &order,
            Form::Rows,
            None,
        )
    }

    /// A view of the elements, typed by the dtype.
    pub fn dyn_view(&self) -> DynView<'_> {
        // SAFETY: each arm views the data as the Element type that accepts its dtype.
        unsafe {
            match self.dtype {
                DType::Bool => DynView::Bool(self.view_unchecked()),
                DType::Int8 => DynView::Int8(self.view_unchecked()),
                DType::Int16 => DynView::Int16(self.view_unchecked()),
                DType::Int32 => DynView::Int32(self.view_unchecked()),
                DType::Int64 => DynView::Int64(self.view_unchecked()),
                DType::UInt8 => DynView::UInt8(self.view_unchecked()),
                DType::UInt16 => DynView::UInt16(self.view_unchecked()),
                DType::UInt32 => DynView::UInt32(self.view_unchecked()),
                DType::UInt64 => DynView::UInt64(self.view_unchecked()),
                DType::Float16 => DynView::Float16(self.view_unchecked()),
                DType::Float32 => DynView::Float32(self.view_unchecked()),
                DType::Float64 => DynView::Float64(self.view_unchecked()),
                DType::Complex64 => DynView::Complex64(self.view_unchecked()),
                DType::Complex128 => DynView::Complex128(self.view_unchecked()),
                DType::Datetime64(u) => DynView::Datetime64(self.view_unchecked(), u),
                DType::Timedelta64(u) => DynView::Timedelta64(self.view_unchecked(), u),
            }
        }
    }
}

/// The number of storage values one element of `shape` takes (complex values are two).
fn values_per_element(dtype: DType, shape: &[usize]) -> Result<usize> {
    let n = element_count(dtype, shape, "tensor")?;
    let per_value = if dtype.is_complex() { 2 } else { 1 };
    n.checked_mul(per_value)
        .ok_or_else(|| Error::invalid("tensor", format!("shape {shape:?} has too many values")))
}

fn misaligned(what: &str, address: usize, align: usize) -> Error {
    Error::Misaligned {
        what: what.to_string(),
        address,
        align,
        misalignment: address % align,
    }
}
