//! The element types arrowbridge carries and their Arrow encodings.

use std::fmt;

use arrow_buffer::Buffer;
use arrow_schema::{DataType, TimeUnit};
use half::f16;
use num_complex::Complex;

use crate::error::{Error, Result};

/// The element type of an array, named as NumPy names it.
///
/// | dtype | Arrow type of one element | zero-copy |
/// | --- | --- | --- |
/// | `bool` | `int8` storage of the canonical `arrow.bool8` extension | yes |
/// | `int8` … `uint64`, `float16` … `float64` | the matching primitive | yes |
/// | `complex64` / `complex128` | two `float32` / `float64` (re, im) inside `arrowbridge.complex_tensor` | yes |
/// | `datetime64[unit]` | `timestamp[unit]` (no time zone) | yes |
/// | `timedelta64[unit]` | `duration[unit]` | yes |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// NumPy's `bool`. Each value is one byte, 0 or 1.
    Bool,
    /// NumPy's `int8`.
    Int8,
    /// NumPy's `int16`.
    Int16,
    /// NumPy's `int32`.
    Int32,
    /// NumPy's `int64`.
    Int64,
    /// NumPy's `uint8`.
    UInt8,
    /// NumPy's `uint16`.
    UInt16,
    /// NumPy's `uint32`.
    UInt32,
    /// NumPy's `uint64`.
    UInt64,
    /// NumPy's `float16`.
    Float16,
    /// NumPy's `float32`.
    Float32,
    /// NumPy's `float64`.
    Float64,
    /// NumPy's `complex64`.
    Complex64,
    /// NumPy's `complex128`.
    Complex128,
    /// NumPy's `datetime64[unit]`. Ticks of the unit since the epoch; `NaT` is the smallest `i64`.
    Datetime64(TimeUnit),
    /// NumPy's `timedelta64[unit]`. Ticks of the unit; `NaT` is the smallest `i64`.
    Timedelta64(TimeUnit),
}

/// All dtypes, each time unit of the datetime types included.
pub const ALL_DTYPES: [DType; 22] = [
    DType::Bool,
    DType::Int8,
    DType::Int16,
    DType::Int32,
    DType::Int64,
    DType::UInt8,
    DType::UInt16,
    DType::UInt32,
    DType::UInt64,
    DType::Float16,
    DType::Float32,
    DType::Float64,
    DType::Complex64,
    DType::Complex128,
    DType::Datetime64(TimeUnit::Second),
    DType::Datetime64(TimeUnit::Millisecond),
    DType::Datetime64(TimeUnit::Microsecond),
    DType::Datetime64(TimeUnit::Nanosecond),
    DType::Timedelta64(TimeUnit::Second),
    DType::Timedelta64(TimeUnit::Millisecond),
    DType::Timedelta64(TimeUnit::Microsecond),
    DType::Timedelta64(TimeUnit::Nanosecond),
];

fn unit_suffix(unit: TimeUnit) -> &'static str {
    match unit {
        TimeUnit::Second => "s",
        TimeUnit::Millisecond => "ms",
        TimeUnit::Microsecond => "us",
        TimeUnit::Nanosecond => "ns",
    }
}

fn parse_unit(suffix: &str) -> Option<TimeUnit> {
    Some(match suffix {
        "s" => TimeUnit::Second,
        "ms" => TimeUnit::Millisecond,
        "us" => TimeUnit::Microsecond,
        "ns" => TimeUnit::Nanosecond,
        _ => return None,
    })
}

impl DType {
    /// Bytes per element.
    pub fn itemsize(self) -> usize {
        match self {
            DType::Bool | DType::Int8 | DType::UInt8 => 1,
            DType::Int16 | DType::UInt16 | DType::Float16 => 2,
            DType::Int32 | DType::UInt32 | DType::Float32 => 4,
            DType::Int64 | DType::UInt64 | DType::Float64 | DType::Complex64 => 8,
            DType::Datetime64(_) | DType::Timedelta64(_) => 8,
            DType::Complex128 => 16,
        }
    }

    /// Required alignment of the data pointer, in bytes.
    pub fn alignment(self) -> usize {
        match self {
            DType::Complex64 => 4,
            DType::Complex128 => 8,
            other => other.itemsize(),
        }
    }

    /// The NumPy name of the dtype: `"float64"`, `"datetime64[ns]"`, ….
    pub fn name(self) -> String {
        match self {
            DType::Datetime64(u) => format!("datetime64[{}]", unit_suffix(u)),
            DType::Timedelta64(u) => format!("timedelta64[{}]", unit_suffix(u)),
            other => other.simple_name().to_string(),
        }
    }

    fn simple_name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::Int8 => "int8",
            DType::Int16 => "int16",
            DType::Int32 => "int32",
            DType::Int64 => "int64",
            DType::UInt8 => "uint8",
            DType::UInt16 => "uint16",
            DType::UInt32 => "uint32",
            DType::UInt64 => "uint64",
            DType::Float16 => "float16",
            DType::Float32 => "float32",
            DType::Float64 => "float64",
            DType::Complex64 => "complex64",
            DType::Complex128 => "complex128",
            DType::Datetime64(_) => "datetime64",
            DType::Timedelta64(_) => "timedelta64",
        }
    }

    /// Parses a NumPy dtype name as [`DType::name`] writes it.
    ///
    /// ```
    /// use arrowbridge::DType;
    /// assert_eq!(DType::from_name("float32").unwrap(), DType::Float32);
    /// assert_eq!(DType::from_name("datetime64[ms]").unwrap().name(), "datetime64[ms]");
    /// assert!(DType::from_name("object").is_err());
    /// ```
    pub fn from_name(name: &str) -> Result<DType> {
        if let Some(rest) = name.strip_prefix("datetime64[") {
            if let Some(unit) = rest.strip_suffix(']').and_then(parse_unit) {
                return Ok(DType::Datetime64(unit));
            }
        }
        if let Some(rest) = name.strip_prefix("timedelta64[") {
            if let Some(unit) = rest.strip_suffix(']').and_then(parse_unit) {
                return Ok(DType::Timedelta64(unit));
            }
        }
        ALL_DTYPES
            .iter()
            .copied()
            .find(|d| !d.is_temporal() && d.simple_name() == name)
            .ok_or_else(|| Error::UnsupportedType {
                what: "array".into(),
                kind: "dtype",
                name: name.to_string(),
            })
    }

    fn is_temporal(self) -> bool {
        matches!(self, DType::Datetime64(_) | DType::Timedelta64(_))
    }

    /// Whether elements are complex numbers, stored as two floats.
    pub fn is_complex(self) -> bool {
        matches!(self, DType::Complex64 | DType::Complex128)
    }

    /// The Arrow type of one stored value. Complex numbers are stored as two such values.
    pub fn storage_type(self) -> DataType {
        match self {
            DType::Bool | DType::Int8 => DataType::Int8,
            DType::Int16 => DataType::Int16,
            DType::Int32 => DataType::Int32,
            DType::Int64 => DataType::Int64,
            DType::UInt8 => DataType::UInt8,
            DType::UInt16 => DataType::UInt16,
            DType::UInt32 => DataType::UInt32,
            DType::UInt64 => DataType::UInt64,
            DType::Float16 => DataType::Float16,
            DType::Float32 | DType::Complex64 => DataType::Float32,
            DType::Float64 | DType::Complex128 => DataType::Float64,
            DType::Datetime64(u) => DataType::Timestamp(u, None),
            DType::Timedelta64(u) => DataType::Duration(u),
        }
    }

    /// The dtype of a plain (non-extension) Arrow primitive type.
    pub fn from_arrow(data_type: &DataType, what: &str) -> Result<DType> {
        Ok(match data_type {
            DataType::Int8 => DType::Int8,
            DataType::Int16 => DType::Int16,
            DataType::Int32 => DType::Int32,
            DataType::Int64 => DType::Int64,
            DataType::UInt8 => DType::UInt8,
            DataType::UInt16 => DType::UInt16,
            DataType::UInt32 => DType::UInt32,
            DataType::UInt64 => DType::UInt64,
            DataType::Float16 => DType::Float16,
            DataType::Float32 => DType::Float32,
            DataType::Float64 => DType::Float64,
            DataType::Timestamp(u, None) => DType::Datetime64(*u),
            DataType::Duration(u) => DType::Timedelta64(*u),
            DataType::Timestamp(_, Some(tz)) => {
                return Err(Error::UnsupportedType {
                    what: what.to_string(),
                    kind: "Arrow type",
                    name: format!("{data_type} (a time zone, {tz:?}, has no NumPy datetime64 equivalent: cast to a timestamp without time zone first)"),
                })
            }
            other => {
                return Err(Error::UnsupportedType {
                    what: what.to_string(),
                    kind: "Arrow type",
                    name: other.to_string(),
                })
            }
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

mod sealed {
    /// Implemented by the element types of this module only.
    pub trait Sealed {}
}

/// A Rust type whose values can be viewed in place in an Arrow buffer.
///
/// `i64` views also accept `datetime64` and `timedelta64` data (their raw ticks); `u8` views
/// also accept `bool` data (0 is false, any other byte true).
///
/// The trait is sealed: [`ArrowTensor::view`](crate::ArrowTensor::view) reads memory as `T`
/// on the strength of `T::accepts`, so a type that claimed a dtype whose size, alignment or
/// bit patterns it does not share would read invalid values through safe code. Only the
/// types listed here implement it.
///
/// ```compile_fail
/// #[derive(Clone, Copy)]
/// struct Mine(u8);
/// impl arrowbridge::Element for Mine {
///     const DTYPE: arrowbridge::DType = arrowbridge::DType::Float64;
/// }
/// ```
pub trait Element:
    sealed::Sealed + Copy + Send + Sync + std::panic::RefUnwindSafe + 'static
{
    /// The dtype a freshly built array of this type gets.
    const DTYPE: DType;

    /// Whether data of `dtype` can be viewed as this type.
    fn accepts(dtype: DType) -> bool {
        dtype == Self::DTYPE
    }

    /// Moves `vec`'s allocation into an Arrow buffer, without a copy: the buffer frees it
    /// as the Vec would have.
    fn into_buffer(vec: Vec<Self>) -> Buffer;
}

macro_rules! element {
    ($($t:ty => $d:expr),* $(,)?) => {
        $(impl Element for $t {
            const DTYPE: DType = $d;
            fn into_buffer(vec: Vec<Self>) -> Buffer {
                Buffer::from_vec(vec)
            }
        })*
    };
}

/// [`Element::into_buffer`] for complex numbers: a `Vec<Complex<T>>` is a `Vec<T>` of twice
/// the length (real and imaginary parts interleaved, as `Complex` is `repr(C)`).
fn complex_into_buffer<T: arrow_buffer::ArrowNativeType>(vec: Vec<Complex<T>>) -> Buffer {
    let mut vec = std::mem::ManuallyDrop::new(vec);
    let (ptr, len, capacity) = (vec.as_mut_ptr(), vec.len(), vec.capacity());
    // SAFETY: `Complex<T>` is `repr(C)` with two `T` fields: the allocation holds `2 * len`
    // initialized `T`s, and a capacity of `2 * capacity` `T`s has the same size and
    // alignment as the one it was allocated with. The original Vec is never dropped.
    let parts = unsafe { Vec::from_raw_parts(ptr.cast::<T>(), 2 * len, 2 * capacity) };
    Buffer::from_vec(parts)
}

impl Element for Complex<f32> {
    const DTYPE: DType = DType::Complex64;
    fn into_buffer(vec: Vec<Self>) -> Buffer {
        complex_into_buffer(vec)
    }
}

impl Element for Complex<f64> {
    const DTYPE: DType = DType::Complex128;
    fn into_buffer(vec: Vec<Self>) -> Buffer {
        complex_into_buffer(vec)
    }
}

macro_rules! sealed {
    ($($t:ty),* $(,)?) => {
        $(impl sealed::Sealed for $t {})*
    };
}

sealed!(
    i8,
    i16,
    i32,
    i64,
    u8,
    u16,
    u32,
    u64,
    f16,
    f32,
    f64,
    Complex<f32>,
    Complex<f64>
);

element! {
    i8 => DType::Int8,
    i16 => DType::Int16,
    i32 => DType::Int32,
    u16 => DType::UInt16,
    u32 => DType::UInt32,
    u64 => DType::UInt64,
    f16 => DType::Float16,
    f32 => DType::Float32,
    f64 => DType::Float64,
}

impl Element for i64 {
    const DTYPE: DType = DType::Int64;
    fn into_buffer(vec: Vec<Self>) -> Buffer {
        Buffer::from_vec(vec)
    }
    fn accepts(dtype: DType) -> bool {
        matches!(
            dtype,
            DType::Int64 | DType::Datetime64(_) | DType::Timedelta64(_)
        )
    }
}

impl Element for u8 {
    const DTYPE: DType = DType::UInt8;
    fn into_buffer(vec: Vec<Self>) -> Buffer {
        Buffer::from_vec(vec)
    }
    fn accepts(dtype: DType) -> bool {
        matches!(dtype, DType::UInt8 | DType::Bool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in ALL_DTYPES {
            assert_eq!(DType::from_name(&d.name()).unwrap(), d);
        }
    }

    #[test]
    fn arrow_types_round_trip_for_plain_dtypes() {
        for d in ALL_DTYPES {
            if d.is_complex() || d == DType::Bool {
                continue;
            }
            assert_eq!(DType::from_arrow(&d.storage_type(), "x").unwrap(), d);
        }
    }
}
