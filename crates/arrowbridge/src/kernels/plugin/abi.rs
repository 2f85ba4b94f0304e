//! The plugin ABI, version 2: the C structs a plugin library and its host exchange, and the
//! conversions both sides use, so that what one side writes the other reads the same way.
//!
//! A tensor crosses as an [`AbiTensor`], a descriptor in the spirit of DLPack's: the address
//! and size of one dense block, the shape, the axis order in memory, a dtype code, and an
//! owner with its release function. Nothing is encoded or allocated per call beyond the
//! descriptor's owner handle; parameters cross as [`AbiParam`]s, plain values (a NaN is a
//! NaN). Only errors travel as JSON, on the failure path.

use std::ffi::{c_char, c_int, c_void};
use std::ptr::NonNull;
use std::sync::Arc;

use arrow_buffer::Buffer;
use arrow_schema::TimeUnit;
use serde_json::{json, Value};
use smallvec::SmallVec;

use super::super::{Param, Params};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::Dims;
use crate::tensor::{ArrowTensor, Form};

/// The version of the ABI this arrowbridge speaks; a library built for another one is
/// refused at load.
pub const ABI_VERSION: u32 = 2;

/// The symbol a plugin exports: `extern "C" fn() -> *const AbiPlugin`.
pub const PLUGIN_SYMBOL: &str = "arrowbridge_plugin";

/// What a plugin exports: its ABI version and entry points. Fields are only ever added at
/// the end; `size` says how many the library knows.
#[repr(C)]
pub struct AbiPlugin {
    /// [`ABI_VERSION`] of the arrowbridge the plugin was built with.
    pub abi_version: u32,
    /// `size_of::<AbiPlugin>()` as the plugin was built.
    pub size: u32,
    /// The JSON description of the plugin's kernels (free it with `free`).
    pub kernels: unsafe extern "C" fn() -> *mut c_char,
    /// Runs one kernel: see [`CallFn`].
    pub call: CallFn,
    /// Frees a string the plugin returned.
    pub free: unsafe extern "C" fn(*mut c_char),
}

/// Runs kernel number `kernel` (its position in the kernel list) on `n_inputs` tensors with
/// `n_params` parameters, handing each output to `emit`. Returns `NULL` on success, else a
/// JSON error (freed with [`AbiPlugin::free`]).
///
/// The plugin takes over every input's owner, whatever happens, and releases each once.
pub type CallFn = unsafe extern "C" fn(
    kernel: usize,
    inputs: *const AbiTensor,
    n_inputs: usize,
    params: *const AbiParam,
    n_params: usize,
    emit: EmitFn,
    ctx: *mut c_void,
) -> *mut c_char;

/// Receives one output of a call and takes over its owner, whatever it returns (0: taken).
/// `emit` and `ctx` are valid only until the call returns, and so are the descriptor's
/// shape, order and names.
pub type EmitFn = unsafe extern "C" fn(ctx: *mut c_void, tensor: *const AbiTensor) -> c_int;

/// Releases one owner of a tensor's memory.
pub type ReleaseFn = unsafe extern "C" fn(owner: *mut c_void);

/// A UTF-8 string, not NUL-terminated.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AbiStr {
    /// The first byte.
    pub ptr: *const u8,
    /// Its length in bytes.
    pub len: usize,
}

impl AbiStr {
    fn of(text: &str) -> Self {
        AbiStr {
            ptr: text.as_ptr(),
            len: text.len(),
        }
    }

    /// # Safety
    /// `ptr` points to `len` readable bytes (or `len` is 0).
    unsafe fn read(&self, what: &str) -> Result<String> {
        if self.len == 0 {
            return Ok(String::new());
        }
        // SAFETY: per this function's contract.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr, self.len) };
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::invalid("plugin call", format!("{what} is not UTF-8")))
    }
}

/// One dense block of elements: an [`ArrowTensor`] as it crosses the boundary.
#[repr(C)]
pub struct AbiTensor {
    /// The first element in memory.
    pub data: *const u8,
    /// Bytes of the elements.
    pub nbytes: usize,
    /// The logical shape: `ndim` lengths.
    pub shape: *const usize,
    /// The axes from outermost to innermost in memory: `ndim` axis numbers (C order is
    /// `0, 1, …`).
    pub order: *const usize,
    /// Names of the element axes, or `NULL`: `ndim - 1` in row form, `ndim` in element form.
    pub dim_names: *const AbiStr,
    /// Number of axes.
    pub ndim: u32,
    /// The dtype: see [`dtype_code`].
    pub dtype: u32,
    /// 0: rows of a column (axis 0 is the row axis); 1: one tensor element.
    pub form: u32,
    /// Keeps the memory alive until `release(owner)`.
    pub owner: *mut c_void,
    /// Called once with `owner` by whoever holds the tensor last; `NULL` for memory that
    /// lives as long as the process.
    pub release: Option<ReleaseFn>,
}

/// A parameter value's kind in [`AbiParam::kind`].
mod kind {
    pub const NONE: u32 = 0;
    pub const BOOL: u32 = 1;
    pub const INT: u32 = 2;
    pub const FLOAT: u32 = 3;
    pub const STR: u32 = 4;
    pub const INTS: u32 = 5;
}

/// One keyword parameter of a call.
#[repr(C)]
pub struct AbiParam {
    /// The parameter's name.
    pub name: AbiStr,
    /// 0 none, 1 bool (`int` is 0 or 1), 2 int, 3 float, 4 str (`text`), 5 list of ints
    /// (`ints`, `n_ints`).
    pub kind: u32,
    /// A bool's or an int's value.
    pub int: i64,
    /// A float's value (any bit pattern: NaN and the infinities included).
    pub float: f64,
    /// A string's value.
    pub text: AbiStr,
    /// A list's values.
    pub ints: *const i64,
    /// The list's length.
    pub n_ints: usize,
}

/// The stable number of a dtype in [`AbiTensor::dtype`]: independent of how either side's
/// `DType` enum is laid out.
pub fn dtype_code(dtype: DType) -> u32 {
    let unit = |u: TimeUnit| match u {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 1,
        TimeUnit::Microsecond => 2,
        TimeUnit::Nanosecond => 3,
    };
    match dtype {
        DType::Bool => 1,
        DType::Int8 => 2,
        DType::Int16 => 3,
        DType::Int32 => 4,
        DType::Int64 => 5,
        DType::UInt8 => 6,
        DType::UInt16 => 7,
        DType::UInt32 => 8,
        DType::UInt64 => 9,
        DType::Float16 => 10,
        DType::Float32 => 11,
        DType::Float64 => 12,
        DType::Complex64 => 13,
        DType::Complex128 => 14,
        DType::Datetime64(u) => 0x100 | unit(u),
        DType::Timedelta64(u) => 0x200 | unit(u),
    }
}

/// The dtype of a [`dtype_code`].
pub fn dtype_of_code(code: u32) -> Result<DType> {
    let unit = |u: u32| match u {
        0 => Some(TimeUnit::Second),
        1 => Some(TimeUnit::Millisecond),
        2 => Some(TimeUnit::Microsecond),
        3 => Some(TimeUnit::Nanosecond),
        _ => None,
    };
    let dtype = match code {
        1 => Some(DType::Bool),
        2 => Some(DType::Int8),
        3 => Some(DType::Int16),
        4 => Some(DType::Int32),
        5 => Some(DType::Int64),
        6 => Some(DType::UInt8),
        7 => Some(DType::UInt16),
        8 => Some(DType::UInt32),
        9 => Some(DType::UInt64),
        10 => Some(DType::Float16),
        11 => Some(DType::Float32),
        12 => Some(DType::Float64),
        13 => Some(DType::Complex64),
        14 => Some(DType::Complex128),
        c if c & !0xff == 0x100 => unit(c & 0xff).map(DType::Datetime64),
        c if c & !0xff == 0x200 => unit(c & 0xff).map(DType::Timedelta64),
        _ => None,
    };
    dtype.ok_or_else(|| Error::invalid("plugin call", format!("unknown dtype code {code:#x}")))
}

/// Describes `tensor`, handing one reference to its memory (`values`, the tensor's buffer or
/// a handle on it) to the descriptor's owner, released by `release`. The descriptor points
/// into `tensor` and into the returned names (which a move does not disturb): keep both
/// until the descriptor has been read.
pub fn describe(
    tensor: &ArrowTensor,
    values: Buffer,
    release: ReleaseFn,
) -> (AbiTensor, Vec<AbiStr>) {
    let names: Vec<AbiStr> = tensor
        .dim_names()
        .map(|names| names.iter().map(|n| AbiStr::of(n)).collect())
        .unwrap_or_default();
    let abi = AbiTensor {
        data: values.as_ptr(),
        nbytes: tensor.nbytes(),
        shape: tensor.shape().as_ptr(),
        order: tensor.axis_order().as_ptr(),
        dim_names: if tensor.dim_names().is_some() {
            names.as_ptr()
        } else {
            std::ptr::null()
        },
        ndim: tensor.shape().len() as u32,
        dtype: dtype_code(tensor.dtype()),
        form: match tensor.form() {
            Form::Rows => 0,
            Form::Element => 1,
        },
        owner: Box::into_raw(Box::new(values)).cast(),
        release: Some(release),
    };
    (abi, names)
}

/// The [`ReleaseFn`] of owners made by [`describe`] (each side has its own copy: memory
/// is always released by the side that allocated it).
///
/// # Safety
/// `owner` comes from [`describe`] and is released once.
pub unsafe extern "C" fn release_buffer(owner: *mut c_void) {
    // SAFETY: per this function's contract, `owner` is a `Box<Buffer>` made by `describe`.
    drop(unsafe { Box::from_raw(owner.cast::<Buffer>()) });
}

/// Memory of the other side: released (once) when the last buffer over it is dropped.
struct Foreign {
    owner: *mut c_void,
    release: Option<ReleaseFn>,
}

// SAFETY: an owner is a handle the other side made to be released from any thread (a boxed
// Arrow buffer, which is Send + Sync); it is only passed back to `release`.
unsafe impl Send for Foreign {}
// SAFETY: as above; `Foreign` has no shared-access methods.
unsafe impl Sync for Foreign {}
impl std::panic::RefUnwindSafe for Foreign {}

impl Drop for Foreign {
    fn drop(&mut self) {
        if let Some(release) = self.release {
            // SAFETY: the owner is released exactly once, here.
            unsafe { release(self.owner) };
        }
    }
}

/// The most axes a descriptor may have (NumPy's limit).
const MAX_DIMS: usize = 64;

/// Takes over the memory a descriptor describes, as a tensor; checks it as
/// [`ArrowTensor::from_buffer`] checks any buffer. The owner is released once whatever
/// happens (now, on an error, or when the last buffer over the memory is dropped).
///
/// # Safety
/// `abi` is a valid descriptor: `data` points to `nbytes` bytes kept alive by `owner`, the
/// shape and order hold `ndim` values, and the names (if any) the number the form implies.
pub unsafe fn adopt(abi: &AbiTensor) -> Result<ArrowTensor> {
    let owner = Foreign {
        owner: abi.owner,
        release: abi.release,
    };
    let what = "plugin tensor";
    let ndim = abi.ndim as usize;
    if ndim > MAX_DIMS {
        return Err(Error::invalid(
            what,
            format!("{ndim} axes; at most {MAX_DIMS}"),
        ));
    }
    let dtype = dtype_of_code(abi.dtype)?;
    let form = match abi.form {
        0 => Form::Rows,
        1 => Form::Element,
        other => return Err(Error::invalid(what, format!("unknown form {other}"))),
    };
    let axes = |ptr: *const usize| -> Result<Dims> {
        if ndim == 0 {
            return Ok(Dims::new());
        }
        if ptr.is_null() {
            return Err(Error::invalid(what, "no shape or axis order"));
        }
        // SAFETY: per this function's contract, `ptr` holds `ndim` values.
        Ok(Dims::from_slice(unsafe {
            std::slice::from_raw_parts(ptr, ndim)
        }))
    };
    let (shape, order) = (axes(abi.shape)?, axes(abi.order)?);
    let dim_names = if abi.dim_names.is_null() {
        None
    } else {
        let count = if form == Form::Rows {
            ndim.saturating_sub(1)
        } else {
            ndim
        };
        // SAFETY: per this function's contract, the names hold `count` strings.
        let names = unsafe { std::slice::from_raw_parts(abi.dim_names, count) };
        Some(
            names
                .iter()
                // SAFETY: each name points to `len` bytes (the contract).
                .map(|n| unsafe { n.read("an axis name") })
                .collect::<Result<Vec<_>>>()?,
        )
    };
    let buffer = match NonNull::new(abi.data.cast_mut()) {
        // SAFETY: `data` points to `nbytes` bytes that `owner` keeps alive (the contract);
        // the buffer holds the owner until its last clone is dropped.
        Some(ptr) if abi.nbytes > 0 => unsafe {
            Buffer::from_custom_allocation(ptr, abi.nbytes, Arc::new(owner))
        },
        _ => {
            drop(owner);
            Buffer::from(arrow_buffer::MutableBuffer::new(0))
        }
    };
    ArrowTensor::from_buffer(buffer, dtype, &shape, &order, form, dim_names)
}

/// `params` as [`AbiParam`]s, pointing into `params`.
pub fn params_to_abi(params: &Params) -> SmallVec<[AbiParam; 4]> {
    params
        .values
        .iter()
        .map(|(name, value)| {
            let mut param = AbiParam {
                name: AbiStr::of(name),
                kind: kind::NONE,
                int: 0,
                float: 0.0,
                text: AbiStr::of(""),
                ints: std::ptr::null(),
                n_ints: 0,
            };
            match value {
                Param::None => {}
                Param::Bool(b) => (param.kind, param.int) = (kind::BOOL, i64::from(*b)),
                Param::Int(i) => (param.kind, param.int) = (kind::INT, *i),
                Param::Float(f) => (param.kind, param.float) = (kind::FLOAT, *f),
                Param::Str(s) => (param.kind, param.text) = (kind::STR, AbiStr::of(s)),
                Param::Ints(v) => {
                    (param.kind, param.ints, param.n_ints) = (kind::INTS, v.as_ptr(), v.len())
                }
            }
            param
        })
        .collect()
}

/// The parameters `params_to_abi` described.
///
/// # Safety
/// Each parameter's strings and list point to as many valid bytes and values as they say.
pub unsafe fn params_from_abi(kernel: &str, params: &[AbiParam]) -> Result<Params> {
    let mut out = Params::with_capacity(params.len());
    for p in params {
        // SAFETY: per this function's contract.
        let name = unsafe { p.name.read("a parameter name") }?;
        let value = match p.kind {
            kind::NONE => Param::None,
            kind::BOOL => Param::Bool(p.int != 0),
            kind::INT => Param::Int(p.int),
            kind::FLOAT => Param::Float(p.float),
            // SAFETY: per this function's contract.
            kind::STR => Param::Str(unsafe { p.text.read("a string parameter") }?),
            kind::INTS if p.n_ints == 0 => Param::Ints(Vec::new()),
            kind::INTS if !p.ints.is_null() => Param::Ints(
                // SAFETY: per this function's contract.
                unsafe { std::slice::from_raw_parts(p.ints, p.n_ints) }.to_vec(),
            ),
            other => {
                return Err(Error::Param {
                    kernel: kernel.to_string(),
                    name,
                    message: format!("unknown parameter kind {other}"),
                })
            }
        };
        out.insert(name, value);
    }
    Ok(out)
}

/// An error as JSON, keeping the variants a caller tells apart.
pub fn error_to_json(error: &Error) -> Value {
    match error {
        Error::DType {
            kernel,
            arg,
            expected,
            got,
        } => {
            json!({"kind": "dtype", "kernel": kernel, "arg": arg, "expected": expected, "got": got})
        }
        Error::Param {
            kernel,
            name,
            message,
        } => json!({"kind": "param", "kernel": kernel, "name": name, "message": message}),
        Error::Shape { context, message } => {
            json!({"kind": "shape", "context": context, "message": message})
        }
        Error::Kernel { kernel, message } => {
            json!({"kind": "kernel", "kernel": kernel, "message": message})
        }
        Error::UnknownKernel { name, available } => {
            json!({"kind": "unknown_kernel", "name": name, "available": available})
        }
        Error::Nulls { what, count } => json!({"kind": "nulls", "what": what, "count": count}),
        Error::UnsupportedType { what, kind, name } => {
            json!({"kind": "unsupported", "what": what, "type_kind": kind, "name": name})
        }
        Error::CopyRequired { what, reason } => {
            json!({"kind": "copy_required", "what": what, "reason": reason})
        }
        Error::Misaligned {
            what,
            address,
            align,
            misalignment,
        } => json!({"kind": "misaligned", "what": what, "address": address, "align": align,
                    "misalignment": misalignment}),
        Error::ByteOrder { what, dtype } => {
            json!({"kind": "byte_order", "what": what, "dtype": dtype})
        }
        Error::OutOfMemory {
            what,
            bytes,
            reason,
        } => json!({"kind": "out_of_memory", "what": what, "bytes": bytes, "reason": reason}),
        other => json!({"kind": "invalid", "message": other.to_string()}),
    }
}

/// The error [`error_to_json`] wrote, for a call of `kernel`.
pub fn error_from_json(kernel: &str, text: &str) -> Error {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Error::kernel(kernel, text);
    };
    let s = |key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    let n = |key: &str| v.get(key).and_then(Value::as_u64).unwrap_or(0) as usize;
    match s("kind").as_str() {
        "dtype" => Error::DType {
            kernel: s("kernel"),
            arg: n("arg"),
            expected: s("expected"),
            got: s("got"),
        },
        "param" => Error::Param {
            kernel: s("kernel"),
            name: s("name"),
            message: s("message"),
        },
        "shape" => Error::shape(s("context"), s("message")),
        "unknown_kernel" => Error::UnknownKernel {
            name: s("name"),
            available: s("available"),
        },
        "nulls" => Error::Nulls {
            what: s("what"),
            count: n("count"),
        },
        "unsupported" => Error::UnsupportedType {
            what: s("what"),
            kind: match s("type_kind").as_str() {
                "dtype" => "dtype",
                "Arrow type" => "Arrow type",
                "extension type" => "extension type",
                "object type" => "object type",
                _ => "type",
            },
            name: s("name"),
        },
        "copy_required" => Error::CopyRequired {
            what: s("what"),
            reason: s("reason"),
        },
        "misaligned" => Error::Misaligned {
            what: s("what"),
            address: n("address"),
            align: n("align"),
            misalignment: n("misalignment"),
        },
        "byte_order" => Error::ByteOrder {
            what: s("what"),
            dtype: s("dtype"),
        },
        "out_of_memory" => Error::OutOfMemory {
            what: s("what"),
            bytes: v.get("bytes").and_then(Value::as_u64).unwrap_or(0),
            reason: s("reason"),
        },
        "invalid" => Error::invalid(format!("kernel {kernel:?}"), s("message")),
        _ => Error::kernel(kernel, s("message")),
    }
}

/// A string for the other side, freed with [`free_string`] (by the side that made it).
pub fn into_c_string(text: String) -> *mut c_char {
    std::ffi::CString::new(text.replace('\0', " "))
        .expect("NUL bytes were replaced")
        .into_raw()
}

/// Frees a string made by [`into_c_string`].
///
/// # Safety
/// `text` is `NULL` or comes from [`into_c_string`] of this side, and is freed once.
pub unsafe fn free_string(text: *mut c_char) {
    if !text.is_null() {
        // SAFETY: per this function's contract.
        drop(unsafe { std::ffi::CString::from_raw(text) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::ALL_DTYPES;

    #[test]
    fn dtype_codes_round_trip() {
        for dtype in ALL_DTYPES {
            assert_eq!(dtype_of_code(dtype_code(dtype)).unwrap(), dtype);
        }
        assert!(dtype_of_code(0).is_err());
        assert!(dtype_of_code(0x104).is_err());
        assert!(dtype_of_code(0x300).is_err());
    }

    #[test]
    fn params_round_trip_exactly() {
        let params = Params::new([
            ("a".to_string(), Param::None),
            ("b".to_string(), Param::Bool(true)),
            ("c".to_string(), Param::Int(i64::MIN)),
            ("d".to_string(), Param::Float(f64::NAN)),
            ("e".to_string(), Param::Float(f64::NEG_INFINITY)),
            ("f".to_string(), Param::Str("ünï".to_string())),
            ("g".to_string(), Param::Ints(vec![3, -1])),
            ("h".to_string(), Param::Ints(vec![])),
        ]);
        let abi = params_to_abi(&params);
        // SAFETY: `abi` points into `params`, alive here.
        let back = unsafe { params_from_abi("k", &abi) }.unwrap();
        assert_eq!(back.values.len(), params.values.len());
        for ((n1, v1), (n2, v2)) in back.values.iter().zip(&params.values) {
            assert_eq!(n1, n2);
            match (v1, v2) {
                (Param::Float(a), Param::Float(b)) => assert_eq!(a.to_bits(), b.to_bits()),
                _ => assert_eq!(v1, v2),
            }
        }
    }

    #[test]
    fn a_described_tensor_is_adopted_intact_and_released_once() {
        let x = ArrowTensor::from_buffer(
            Buffer::from_vec((0..24).map(f64::from).collect::<Vec<_>>()),
            DType::Float64,
            &[2, 3, 4],
            &[0, 2, 1],
            Form::Rows,
            Some(vec!["w".into(), "h".into()]),
        )
        .unwrap();
        let (described, _names) = describe(&x, x.values().clone(), release_buffer);
        // SAFETY: the descriptor is valid and adopted once.
        let y = unsafe { adopt(&described) }.unwrap();
        assert_eq!(y.shape(), x.shape());
        assert_eq!(y.axis_order(), x.axis_order());
        assert_eq!(y.dim_names(), x.dim_names());
        assert_eq!(y.data_ptr(), x.data_ptr());
        assert_eq!(y.view::<f64>().unwrap(), x.view::<f64>().unwrap());
    }

    #[test]
    fn a_bad_descriptor_is_an_error_and_still_released() {
        static RELEASED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        unsafe extern "C" fn count(_: *mut c_void) {
            RELEASED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let data = [0u8; 16];
        let shape = [2usize];
        let order = [0usize];
        let bad = |dtype, nbytes| AbiTensor {
            data: data.as_ptr(),
            nbytes,
            shape: shape.as_ptr(),
            order: order.as_ptr(),
            dim_names: std::ptr::null(),
            ndim: 1,
            dtype,
            form: 0,
            owner: std::ptr::null_mut(),
            release: Some(count),
        };
        // SAFETY: the descriptors point into `data`, `shape` and `order`, alive here.
        let unknown = unsafe { adopt(&bad(999, 16)) }.unwrap_err();
        assert!(
            unknown.to_string().contains("unknown dtype code"),
            "{unknown}"
        );
        // SAFETY: as above.
        let short = unsafe { adopt(&bad(dtype_code(DType::Float64), 8)) }.unwrap_err();
        assert!(
            short.to_string().contains("fewer than the 16 bytes"),
            "{short}"
        );
        assert_eq!(RELEASED.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
