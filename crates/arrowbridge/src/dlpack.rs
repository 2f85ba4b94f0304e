//! DLPack: tensors shared with JAX, PyTorch, NumPy, CuPy and any other library that speaks
//! the [DLPack](https://dmlc.github.io/dlpack/latest/) protocol, without copies.
//!
//! * [`ManagedTensor`] owns one DLPack tensor handed over by a producer (versioned, DLPack
//!   ≥ 1.0, or the legacy unversioned struct) and calls its deleter exactly once, when the
//!   last view of it is gone. [`ManagedTensor::strided`] checks it: the CPU, a dtype of
//!   [`DType`], a sane shape and strides, aligned data.
//! * [`ArrowTensor::from_dlpack`] views it as an [`ArrowTensor`] when its elements form one
//!   block (any axis order); [`ArrowTensor::into_dlpack`] hands an [`ArrowTensor`] to a
//!   DLPack consumer.
//!
//! ```
//! use arrowbridge::dlpack::ManagedTensor;
//! use arrowbridge::ArrowTensor;
//! use ndarray::{ArrayD, IxDyn};
//!
//! let x = ArrowTensor::from_array(ArrayD::from_shape_fn(IxDyn(&[2, 3]), |i| (i[0] * 3 + i[1]) as f64));
//! let address = x.data_ptr();
//! // What a consumer receives, and what a producer hands over: the same memory.
//! let managed = unsafe { ManagedTensor::from_versioned(x.into_dlpack(false)) }?;
//! let y = ArrowTensor::from_dlpack(managed)?;
//! assert_eq!((y.data_ptr(), y.shape()), (address, &[2, 3][..]));
//! assert_eq!(y.view::<f64>()?[[1, 2]], 5.0);
//! # Ok::<(), arrowbridge::Error>(())
//! ```

use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::Arc;

use arrow_buffer::Buffer;
use smallvec::SmallVec;

use crate::layout::{block_order, Dims};
use crate::{ArrowTensor, DType, Error, Form, Result};

/// The DLPack version this module reads and writes.
pub const VERSION: DLPackVersion = DLPackVersion { major: 1, minor: 1 };
/// `DLManagedTensorVersioned::flags`: the consumer must not write to the data.
pub const FLAG_READ_ONLY: u64 = 1;
/// `DLManagedTensorVersioned::flags`: the producer copied the data for this export.
pub const FLAG_IS_COPIED: u64 = 1 << 1;

/// `DLDeviceType::kDLCPU`.
pub const CPU: i32 = 1;
/// Device types whose memory the CPU reads directly (pinned and managed memory), as NumPy
/// accepts them.
const HOST_READABLE: [i32; 4] = [CPU, 3, 11, 13];

/// `DLDevice`: where the data lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DLDevice {
    /// `DLDeviceType`: 1 CPU, 2 CUDA, 3 CUDA host, 10 ROCm, …
    pub device_type: i32,
    /// The device's index (0 for the CPU).
    pub device_id: i32,
}

/// `DLDataType`: a type code, its width in bits and the number of lanes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DLDataType {
    /// `DLDataTypeCode`: 0 int, 1 uint, 2 float, 4 bfloat, 5 complex, 6 bool, 7–17 float8/6/4.
    pub code: u8,
    /// Bits of one lane.
    pub bits: u8,
    /// Lanes (1 for a scalar type).
    pub lanes: u16,
}

/// `DLTensor`: the data pointer and its layout. Shape and strides are counted in elements.
#[repr(C)]
#[derive(Debug)]
pub struct DLTensor {
    /// The start of the allocation (the first element is `byte_offset` bytes further).
    pub data: *mut c_void,
    /// Where `data` lives.
    pub device: DLDevice,
    /// The number of axes.
    pub ndim: i32,
    /// The element type.
    pub dtype: DLDataType,
    /// `ndim` lengths.
    pub shape: *mut i64,
    /// `ndim` strides in elements, or NULL for C order.
    pub strides: *mut i64,
    /// Bytes from `data` to the first element.
    pub byte_offset: u64,
}

/// `DLManagedTensor`: the unversioned (DLPack < 1.0) tensor with its deleter.
#[repr(C)]
#[derive(Debug)]
pub struct DLManagedTensor {
    /// The tensor.
    pub dl_tensor: DLTensor,
    /// The producer's context.
    pub manager_ctx: *mut c_void,
    /// Frees the tensor; called once by its consumer.
    pub deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

/// `DLPackVersion`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DLPackVersion {
    /// Incompatible changes.
    pub major: u32,
    /// Compatible additions.
    pub minor: u32,
}

/// `DLManagedTensorVersioned`: the DLPack ≥ 1.0 tensor, with its version and flags.
#[repr(C)]
#[derive(Debug)]
pub struct DLManagedTensorVersioned {
    /// The version of the struct.
    pub version: DLPackVersion,
    /// The producer's context.
    pub manager_ctx: *mut c_void,
    /// Frees the tensor; called once by its consumer.
    pub deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    /// [`FLAG_READ_ONLY`], [`FLAG_IS_COPIED`], …
    pub flags: u64,
    /// The tensor.
    pub dl_tensor: DLTensor,
}

/// A DLPack tensor handed over by its producer. Dropping it calls the producer's deleter,
/// exactly once.
#[derive(Debug)]
pub struct ManagedTensor(Managed);

#[derive(Debug)]
enum Managed {
    Versioned(NonNull<DLManagedTensorVersioned>),
    Legacy(NonNull<DLManagedTensor>),
}

// SAFETY: the tensor is only read, and released once, by its one owner; DLPack producers'
// deleters may be called from any thread (NumPy's, JAX's and PyTorch's take the GIL
// themselves where they need it).
unsafe impl Send for ManagedTensor {}
// SAFETY: as above: shared access only reads the descriptor.
unsafe impl Sync for ManagedTensor {}

impl ManagedTensor {
    /// Takes ownership of a versioned tensor (what a `dltensor_versioned` capsule holds).
    /// A tensor of another major version is refused and left to its producer (as the
    /// protocol says: its layout is unknown, so neither its fields nor its deleter are
    /// touched).
    ///
    /// # Safety
    /// `ptr` is NULL or points to a valid `DLManagedTensorVersioned` that nothing else will
    /// use or release.
    pub unsafe fn from_versioned(ptr: *mut DLManagedTensorVersioned) -> Result<Self> {
        let ptr = NonNull::new(ptr).ok_or_else(|| Error::invalid("DLPack tensor", "NULL"))?;
        // SAFETY: the caller guarantees a valid struct; `version` is its first field in
        // every version of the struct.
        let version = unsafe { ptr.as_ref().version };
        if version.major != VERSION.major {
            return Err(Error::invalid(
                "DLPack tensor",
                format!(
                    "DLPack version {}.{}; arrowbridge reads version {}.x",
                    version.major, version.minor, VERSION.major
                ),
            ));
        }
        Ok(ManagedTensor(Managed::Versioned(ptr)))
    }

    /// Takes ownership of an unversioned tensor (what a `dltensor` capsule holds).
    ///
    /// # Safety
    /// `ptr` is NULL or points to a valid `DLManagedTensor` that nothing else will use or
    /// release.
    pub unsafe fn from_legacy(ptr: *mut DLManagedTensor) -> Result<Self> {
        let ptr = NonNull::new(ptr).ok_or_else(|| Error::invalid("DLPack tensor", "NULL"))?;
        Ok(ManagedTensor(Managed::Legacy(ptr)))
    }

    /// The tensor's descriptor.
    pub fn dl_tensor(&self) -> &DLTensor {
        // SAFETY: the pointers are valid while `self` owns them.
        unsafe {
            match &self.0 {
                Managed::Versioned(p) => &p.as_ref().dl_tensor,
                Managed::Legacy(p) => &p.as_ref().dl_tensor,
            }
        }
    }

    /// Whether the data must not be written: the producer's read-only flag. Unversioned
    /// tensors cannot say, and count as read-only, as NumPy treats them (JAX, whose arrays
    /// are immutable, exports unversioned tensors).
    pub fn read_only(&self) -> bool {
        match &self.0 {
            // SAFETY: valid while owned.
            Managed::Versioned(p) => (unsafe { p.as_ref().flags } & FLAG_READ_ONLY) != 0,
            Managed::Legacy(_) => true,
        }
    }

    /// Checks the tensor and describes it: dtype, shape, strides in bytes, first element.
    pub fn strided(&self) -> Result<Strided> {
        let t = self.dl_tensor();
        let what = "DLPack tensor";
        check_device(t.device, what)?;
        let dtype = dtype_of(t.dtype, what)?;
        let ndim = usize::try_from(t.ndim)
            .map_err(|_| Error::invalid(what, format!("ndim {} is negative", t.ndim)))?;
        let raw = |p: *mut i64, name: &str| -> Result<&[i64]> {
            match (p.is_null(), ndim) {
                (_, 0) => Ok(&[]),
                (true, _) => Err(Error::invalid(what, format!("{name} is NULL"))),
                // SAFETY: a valid DLTensor has `ndim` entries there.
                (false, n) => Ok(unsafe { std::slice::from_raw_parts(p, n) }),
            }
        };
        let shape = raw(t.shape, "shape")?
            .iter()
            .map(|&n| usize::try_from(n))
            .collect::<std::result::Result<Dims, _>>()
            .map_err(|_| Error::invalid(what, "a negative length in its shape"))?;
        let count = crate::tensor::element_count(dtype, &shape, what)?;
        let itemsize = dtype.itemsize() as isize;
        let strides: SmallVec<[isize; 4]> = if t.strides.is_null() || count == 0 {
            c_strides(&shape, itemsize)
        } else {
            raw(t.strides, "strides")?
                .iter()
                .map(|&s| {
                    isize::try_from(s)
                        .ok()
                        .and_then(|s| s.checked_mul(itemsize))
                        .ok_or_else(|| Error::invalid(what, format!("stride {s} overflows")))
                })
                .collect::<Result<_>>()?
        };
        let offset = usize::try_from(t.byte_offset)
            .map_err(|_| Error::invalid(what, "byte_offset overflows"))?;
        let first = (t.data as usize)
            .checked_add(offset)
            .ok_or_else(|| Error::invalid(what, "data + byte_offset overflows"))?;
        if count > 0 && !first.is_multiple_of(dtype.alignment()) {
            return Err(Error::Misaligned {
                what: format!("DLPack tensor of dtype {dtype}"),
                address: first,
                align: dtype.alignment(),
                misalignment: first % dtype.alignment(),
            });
        }
        // The bytes spanned: from the lowest to the highest element address (strides may
        // be negative), and the offset of the first element within them.
        let (mut low, mut high) = (0isize, 0isize);
        if count > 0 {
            if t.data.is_null() {
                return Err(Error::invalid(what, "data is NULL but it has elements"));
            }
            let overflow = || Error::invalid(what, "strides overflow the address space");
            for (&n, &s) in shape.iter().zip(&strides) {
                // `n` is at most the element count, which fits in isize.
                let reach = s.checked_mul(n as isize - 1).ok_or_else(overflow)?;
                if reach < 0 {
                    low = low.checked_add(reach).ok_or_else(overflow)?;
                } else {
                    high = high.checked_add(reach).ok_or_else(overflow)?;
                }
            }
            high = high.checked_add(itemsize).ok_or_else(overflow)?;
            if first.checked_add(high as usize).is_none() {
                return Err(overflow());
            }
        }
        if count > 0 && low.unsigned_abs() > first {
            return Err(Error::invalid(what, "strides reach below address 0"));
        }
        Ok(Strided {
            dtype,
            shape,
            strides,
            first: first as *const u8,
            span_start: first.wrapping_sub(low.unsigned_abs()) as *const u8,
            span: (high - low) as usize,
            read_only: self.read_only(),
        })
    }
}

impl Drop for ManagedTensor {
    fn drop(&mut self) {
        // SAFETY: the deleter releases the struct we own, once; nothing uses it afterwards.
        unsafe {
            match self.0 {
                Managed::Versioned(p) => {
                    if let Some(deleter) = p.as_ref().deleter {
                        deleter(p.as_ptr());
                    }
                }
                Managed::Legacy(p) => {
                    if let Some(deleter) = p.as_ref().deleter {
                        deleter(p.as_ptr());
                    }
                }
            }
        }
    }
}

/// A checked DLPack tensor's layout, in bytes.
#[derive(Clone, Debug)]
pub struct Strided {
    /// The element type.
    pub dtype: DType,
    /// The lengths of the axes.
    pub shape: Dims,
    /// Bytes between neighbours along each axis (negative for a reversed axis).
    pub strides: SmallVec<[isize; 4]>,
    /// The address of element `[0, 0, …]`.
    pub first: *const u8,
    /// The lowest address any element occupies.
    pub span_start: *const u8,
    /// Bytes from `span_start` to the end of the highest element.
    pub span: usize,
    /// Whether the producer forbids writes.
    pub read_only: bool,
}

fn c_strides(shape: &[usize], itemsize: isize) -> SmallVec<[isize; 4]> {
    let mut strides: SmallVec<[isize; 4]> = SmallVec::from_elem(0, shape.len());
    let mut step = itemsize;
    for (s, &n) in strides.iter_mut().zip(shape).rev() {
        *s = step;
        step = step.saturating_mul(n.max(1) as isize);
    }
    strides
}

/// A device's name as the array libraries print it: `cpu`, `cuda:0`, `rocm:1`, …
pub fn device_name(device: DLDevice) -> String {
    let kind = match device.device_type {
        1 => "cpu",
        2 => "cuda",
        3 => "cuda_host",
        4 => "opencl",
        7 => "vulkan",
        8 => "metal",
        9 => "vpi",
        10 => "rocm",
        11 => "rocm_host",
        12 => "ext_dev",
        13 => "cuda_managed",
        14 => "oneapi",
        15 => "webgpu",
        16 => "hexagon",
        17 => "maia",
        _ => return format!("device type {}:{}", device.device_type, device.device_id),
    };
    format!("{kind}:{}", device.device_id)
}

/// Refuses memory the CPU cannot read.
pub fn check_device(device: DLDevice, what: &str) -> Result<()> {
    if HOST_READABLE.contains(&device.device_type) {
        Ok(())
    } else {
        Err(Error::Device {
            what: what.to_string(),
            device: device_name(device),
        })
    }
}

/// The arrowbridge dtype of a DLPack dtype; the others (bfloat16, float8, sub-byte and
/// vector types) are [`Error::UnsupportedType`] errors that name them.
pub fn dtype_of(dt: DLDataType, what: &str) -> Result<DType> {
    let unsupported = |name: String| Error::UnsupportedType {
        what: what.to_string(),
        kind: "DLPack dtype",
        name,
    };
    if dt.lanes != 1 {
        return Err(unsupported(format!(
            "{}x{} (vector types)",
            dtype_name(dt.code, dt.bits),
            dt.lanes
        )));
    }
    Ok(match (dt.code, dt.bits) {
        (6, 8) => DType::Bool,
        (0, 8) => DType::Int8,
        (0, 16) => DType::Int16,
        (0, 32) => DType::Int32,
        (0, 64) => DType::Int64,
        (1, 8) => DType::UInt8,
        (1, 16) => DType::UInt16,
        (1, 32) => DType::UInt32,
        (1, 64) => DType::UInt64,
        (2, 16) => DType::Float16,
        (2, 32) => DType::Float32,
        (2, 64) => DType::Float64,
        (5, 64) => DType::Complex64,
        (5, 128) => DType::Complex128,
        (code, bits) => return Err(unsupported(dtype_name(code, bits))),
    })
}

/// A DLPack dtype's name, as ml_dtypes and JAX spell it.
fn dtype_name(code: u8, bits: u8) -> String {
    let named = match code {
        4 => "bfloat",
        7 => return "float8_e3m4".into(),
        8 => return "float8_e4m3".into(),
        9 => return "float8_e4m3b11fnuz".into(),
        10 => return "float8_e4m3fn".into(),
        11 => return "float8_e4m3fnuz".into(),
        12 => return "float8_e5m2".into(),
        13 => return "float8_e5m2fnuz".into(),
        14 => return "float8_e8m0fnu".into(),
        15 => return "float6_e2m3fn".into(),
        16 => return "float6_e3m2fn".into(),
        17 => return "float4_e2m1fn".into(),
        0 => "int",
        1 => "uint",
        2 => "float",
        3 => "opaque",
        5 => "complex",
        6 => "bool",
        _ => return format!("type code {code} of {bits} bits"),
    };
    format!("{named}{bits}")
}

/// The DLPack dtype of an arrowbridge dtype (`None` for datetime64/timedelta64, which
/// DLPack does not have).
pub fn dl_dtype(dtype: DType) -> Option<DLDataType> {
    let (code, bits) = match dtype {
        DType::Bool => (6, 8),
        DType::Int8 => (0, 8),
        DType::Int16 => (0, 16),
        DType::Int32 => (0, 32),
        DType::Int64 => (0, 64),
        DType::UInt8 => (1, 8),
        DType::UInt16 => (1, 16),
        DType::UInt32 => (1, 32),
        DType::UInt64 => (1, 64),
        DType::Float16 => (2, 16),
        DType::Float32 => (2, 32),
        DType::Float64 => (2, 64),
        DType::Complex64 => (5, 64),
        DType::Complex128 => (5, 128),
        DType::Datetime64(_) | DType::Timedelta64(_) => return None,
    };
    Some(DLDataType {
        code,
        bits,
        lanes: 1,
    })
}

impl ArrowTensor {
    /// Views a DLPack tensor as a tensor over the same memory, which `managed` keeps alive
    /// (its deleter runs when the last buffer referring to it is dropped). Its elements must
    /// form one block, in any axis order; a tensor with gaps between its elements is a
    /// [`Error::CopyRequired`] error (view it with [`ManagedTensor::strided`] instead).
    pub fn from_dlpack(managed: ManagedTensor) -> Result<ArrowTensor> {
        let s = managed.strided()?;
        let what = "DLPack tensor";
        let itemsize = s.dtype.itemsize();
        let order =
            block_order(&s.shape, &s.strides, itemsize).ok_or_else(|| Error::CopyRequired {
                what: format!("{what} of shape {:?}", s.shape.as_slice()),
                reason: format!(
                    "strides {:?} (bytes) do not describe one contiguous block",
                    s.strides.as_slice()
                ),
            })?;
        let nbytes = s.shape.iter().product::<usize>() * itemsize;
        let buffer = match NonNull::new(s.first as *mut u8) {
            // SAFETY: the producer guarantees `nbytes` readable bytes at `first` (one block,
            // checked above) until its deleter runs, which `managed`, now the allocation's
            // owner, calls when the buffer is dropped.
            Some(ptr) if nbytes > 0 => unsafe {
                Buffer::from_custom_allocation(ptr, nbytes, Arc::new(managed))
            },
            _ => Buffer::from(arrow_buffer::MutableBuffer::new(0)),
        };
        let form = if order.first().is_none_or(|&a| a == 0) {
            Form::Rows
        } else {
            Form::Element
        };
        ArrowTensor::from_buffer(buffer, s.dtype, &s.shape, &order, form, None)
    }

    /// Hands the tensor to a DLPack consumer as a versioned `DLManagedTensorVersioned`,
    /// over the same memory. The consumer owns the result and must call its deleter once;
    /// that drops this tensor's buffer. `read_only` sets the read-only flag (Arrow memory is
    /// immutable: pass `true` unless this tensor's memory is known to be writable by
    /// whoever receives it). Datetime64/timedelta64 tensors go out as int64.
    pub fn into_dlpack(self, read_only: bool) -> *mut DLManagedTensorVersioned {
        let dtype = dl_dtype(self.dtype()).unwrap_or(DLDataType {
            code: 0,
            bits: 64,
            lanes: 1,
        });
        let itemsize = self.dtype().itemsize() as i64;
        let shape: Box<[i64]> = self.shape().iter().map(|&n| n as i64).collect();
        let strides: Box<[i64]> = self
            .byte_strides()
            .iter()
            .map(|&s| s as i64 / itemsize)
            .collect();
        let mut context = Box::new(Exported {
            shape,
            strides,
            tensor: self,
        });
        let dl_tensor = DLTensor {
            data: context.tensor.data_ptr() as *mut c_void,
            device: DLDevice {
                device_type: CPU,
                device_id: 0,
            },
            ndim: context.shape.len() as i32,
            dtype,
            shape: context.shape.as_mut_ptr(),
            strides: context.strides.as_mut_ptr(),
            byte_offset: 0,
        };
        let managed = Box::new(DLManagedTensorVersioned {
            version: VERSION,
            manager_ctx: Box::into_raw(context).cast(),
            deleter: Some(release_exported),
            flags: if read_only { FLAG_READ_ONLY } else { 0 },
            dl_tensor,
        });
        Box::into_raw(managed)
    }
}

/// What an exported tensor's `manager_ctx` owns.
struct Exported {
    shape: Box<[i64]>,
    strides: Box<[i64]>,
    tensor: ArrowTensor,
}

unsafe extern "C" fn release_exported(managed: *mut DLManagedTensorVersioned) {
    if managed.is_null() {
        return;
    }
    // SAFETY: `managed` and its context were made by `into_dlpack` with Box::into_raw, and
    // the protocol calls the deleter once.
    let managed = unsafe { Box::from_raw(managed) };
    // SAFETY: as above.
    drop(unsafe { Box::from_raw(managed.manager_ctx.cast::<Exported>()) });
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static DELETED: AtomicUsize = AtomicUsize::new(0);

    /// A legacy tensor over `data`, with `strides` (elements), whose deleter counts calls.
    fn legacy(data: &mut [f64], shape: &mut [i64], strides: &mut [i64]) -> *mut DLManagedTensor {
        unsafe extern "C" fn count(_: *mut DLManagedTensor) {
            DELETED.fetch_add(1, Ordering::SeqCst);
        }
        Box::leak(Box::new(DLManagedTensor {
            dl_tensor: DLTensor {
                data: data.as_mut_ptr().cast(),
                device: DLDevice {
                    device_type: CPU,
                    device_id: 0,
                },
                ndim: shape.len() as i32,
                dtype: dl_dtype(DType::Float64).unwrap(),
                shape: shape.as_mut_ptr(),
                strides: strides.as_mut_ptr(),
                byte_offset: 0,
            },
            manager_ctx: std::ptr::null_mut(),
            deleter: Some(count),
        }))
    }

    #[test]
    fn an_exported_tensor_comes_back_as_the_same_memory() {
        let x = ArrowTensor::from_array(ArrayD::from_shape_fn(IxDyn(&[2, 3, 4]), |i| {
            (i[0] * 12 + i[1] * 4 + i[2]) as i32
        }));
        let address = x.data_ptr();
        let managed = x.into_dlpack(true);
        // SAFETY: `into_dlpack` returns a valid, owned versioned tensor.
        let managed = unsafe { ManagedTensor::from_versioned(managed) }.unwrap();
        assert!(managed.read_only());
        let s = managed.strided().unwrap();
        assert_eq!(
            (s.dtype, s.strides.as_slice()),
            (DType::Int32, &[48, 16, 4][..])
        );
        let y = ArrowTensor::from_dlpack(managed).unwrap();
        assert_eq!(y.data_ptr(), address);
        assert_eq!(y.view::<i32>().unwrap()[[1, 2, 3]], 23);
    }

    #[test]
    fn the_deleter_runs_once_when_the_last_view_is_dropped_and_gaps_are_refused() {
        let mut data = [0.0f64; 12];
        let (mut shape, mut strides) = ([3i64, 2], [1i64, 3]); // Fortran order
        let before = DELETED.load(Ordering::SeqCst);
        // SAFETY: `data`, `shape` and `strides` outlive the tensor, which is dropped below.
        let managed =
            unsafe { ManagedTensor::from_legacy(legacy(&mut data, &mut shape, &mut strides)) }
                .unwrap();
        let t = ArrowTensor::from_dlpack(managed).unwrap();
        assert_eq!(t.form(), Form::Element);
        let copy = t.clone();
        drop(t);
        assert_eq!(DELETED.load(Ordering::SeqCst), before);
        drop(copy);
        assert_eq!(DELETED.load(Ordering::SeqCst), before + 1);

        let (mut shape, mut strides) = ([3i64, 2], [4i64, 1]); // rows with a gap
                                                               // SAFETY: as above; the tensor is dropped by `from_dlpack`'s error path.
        let managed =
            unsafe { ManagedTensor::from_legacy(legacy(&mut data, &mut shape, &mut strides)) }
                .unwrap();
        let err = ArrowTensor::from_dlpack(managed).unwrap_err();
        assert!(matches!(err, Error::CopyRequired { .. }), "{err}");
        assert_eq!(DELETED.load(Ordering::SeqCst), before + 2);
    }

    #[test]
    fn unsupported_dtypes_and_devices_are_named() {
        let bf16 = DLDataType {
            code: 4,
            bits: 16,
            lanes: 1,
        };
        assert!(dtype_of(bf16, "x")
            .unwrap_err()
            .to_string()
            .contains("bfloat16"));
        let fp8 = DLDataType {
            code: 10,
            bits: 8,
            lanes: 1,
        };
        assert!(dtype_of(fp8, "x")
            .unwrap_err()
            .to_string()
            .contains("float8_e4m3fn"));
        let cuda = DLDevice {
            device_type: 2,
            device_id: 1,
        };
        assert!(check_device(cuda, "x")
            .unwrap_err()
            .to_string()
            .contains("cuda:1"));
        for dtype in crate::ALL_DTYPES
            .iter()
            .copied()
            .filter(|d| dl_dtype(*d).is_some())
        {
            assert_eq!(dtype_of(dl_dtype(dtype).unwrap(), "x").unwrap(), dtype);
        }
    }
}
