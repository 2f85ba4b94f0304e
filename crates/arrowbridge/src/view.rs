//! [`DynView`]: an `ndarray` view whose element type is known only at run time.

use arrow_schema::TimeUnit;
use half::f16;
use ndarray::ArrayViewD;
use num_complex::Complex;

use crate::dtype::DType;

/// A view of an [`ArrowTensor`](crate::ArrowTensor), one variant per dtype.
///
/// `bool` is viewed as bytes (`0` false, anything else true); `datetime64` and `timedelta64`
/// as their `i64` ticks with the unit beside them.
#[derive(Clone, Debug)]
pub enum DynView<'a> {
    /// A view of `bool` data (bytes, 0 or 1).
    Bool(ArrayViewD<'a, u8>),
    /// A view of `int8` data.
    Int8(ArrayViewD<'a, i8>),
    /// A view of `int16` data.
    Int16(ArrayViewD<'a, i16>),
    /// A view of `int32` data.
    Int32(ArrayViewD<'a, i32>),
    /// A view of `int64` data.
    Int64(ArrayViewD<'a, i64>),
    /// A view of `uint8` data.
    UInt8(ArrayViewD<'a, u8>),
    /// A view of `uint16` data.
    UInt16(ArrayViewD<'a, u16>),
    /// A view of `uint32` data.
    UInt32(ArrayViewD<'a, u32>),
    /// A view of `uint64` data.
    UInt64(ArrayViewD<'a, u64>),
    /// A view of `float16` data.
    Float16(ArrayViewD<'a, f16>),
    /// A view of `float32` data.
    Float32(ArrayViewD<'a, f32>),
    /// A view of `float64` data.
    Float64(ArrayViewD<'a, f64>),
    /// A view of `complex64` data.
    Complex64(ArrayViewD<'a, Complex<f32>>),
    /// A view of `complex128` data.
    Complex128(ArrayViewD<'a, Complex<f64>>),
    /// A view of `datetime64[unit]` data, with its unit.
    Datetime64(ArrayViewD<'a, i64>, TimeUnit),
    /// A view of `timedelta64[unit]` data, with its unit.
    Timedelta64(ArrayViewD<'a, i64>, TimeUnit),
}

impl DynView<'_> {
    /// The dtype of the viewed elements.
    pub fn dtype(&self) -> DType {
        match self {
            DynView::Bool(_) => DType::Bool,
            DynView::Int8(_) => DType::Int8,
            DynView::Int16(_) => DType::Int16,
            DynView::Int32(_) => DType::Int32,
            DynView::Int64(_) => DType::Int64,
            DynView::UInt8(_) => DType::UInt8,
            DynView::UInt16(_) => DType::UInt16,
            DynView::UInt32(_) => DType::UInt32,
            DynView::UInt64(_) => DType::UInt64,
            DynView::Float16(_) => DType::Float16,
            DynView::Float32(_) => DType::Float32,
            DynView::Float64(_) => DType::Float64,
            DynView::Complex64(_) => DType::Complex64,
            DynView::Complex128(_) => DType::Complex128,
            DynView::Datetime64(_, u) => DType::Datetime64(*u),
            DynView::Timedelta64(_, u) => DType::Timedelta64(*u),
        }
    }
}
