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
    Bool(ArrayViewD<'a, u8>),
    Int8(ArrayViewD<'a, i8>),
    Int16(ArrayViewD<'a, i16>),
    Int32(ArrayViewD<'a, i32>),
    Int64(ArrayViewD<'a, i64>),
    UInt8(ArrayViewD<'a, u8>),
    UInt16(ArrayViewD<'a, u16>),
    UInt32(ArrayViewD<'a, u32>),
    UInt64(ArrayViewD<'a, u64>),
    Float16(ArrayViewD<'a, f16>),
    Float32(ArrayViewD<'a, f32>),
    Float64(ArrayViewD<'a, f64>),
    Complex64(ArrayViewD<'a, Complex<f32>>),
    Complex128(ArrayViewD<'a, Complex<f64>>),
    Datetime64(ArrayViewD<'a, i64>, TimeUnit),
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
