//! [`RaggedArg`]: ragged data (tensors of one rank but different shapes) as a function
//! argument.

use std::marker::PhantomData;

use arrowbridge::{Error, RaggedTensor};
use ndarray::ArrayViewD;
use pyo3::prelude::*;
use pyo3::Borrowed;

use crate::errors::BridgeResult;
use crate::ragged::read_ragged;

/// Ragged data of element type `T` for a `#[pyfunction]` argument: a list of NumPy arrays
/// (or DLPack or Arrow producers) of one rank, or any Arrow producer of
/// `arrow.variable_shape_tensor` (pyarrow arrays and chunked arrays, a one-column table).
///
/// Each row is an `ndarray` view ([`row`](Self::row), [`rows`](Self::rows)) with its logical
/// shape. An Arrow producer's memory is viewed in place (several chunks are concatenated); a
/// list of arrays is copied once into one buffer, as Arrow needs its rows contiguous.
///
/// ```no_run
/// use arrowbridge_pyo3::RaggedArg;
/// use pyo3::prelude::*;
///
/// /// The mean of each image, whatever its size.
/// #[pyfunction]
/// fn means(images: RaggedArg<'_, f32>) -> Vec<f32> {
///     images.rows().map(|r| r.mean().unwrap_or(f32::NAN)).collect()
/// }
/// ```
pub struct RaggedArg<'py, T: crate::ArgElement> {
    tensor: RaggedTensor,
    _marker: PhantomData<(&'py (), T)>,
}

impl<'py, T: crate::ArgElement> RaggedArg<'py, T> {
    /// The number of rows.
    pub fn len(&self) -> usize {
        self.tensor.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.tensor.is_empty()
    }

    /// Row `i` (panics when `i >= len()`, as slice indexing does).
    pub fn row(&self, i: usize) -> ArrayViewD<'_, T> {
        self.tensor
            .row::<T>(i)
            .unwrap_or_else(|e| panic!("RaggedArg::row({i}): {e}"))
    }

    /// Every row, in order.
    pub fn rows(&self) -> impl Iterator<Item = ArrayViewD<'_, T>> + '_ {
        (0..self.len()).map(move |i| self.row(i))
    }

    /// The ragged tensor itself.
    pub fn tensor(&self) -> &RaggedTensor {
        &self.tensor
    }

    /// Reads `obj` (see the type's documentation).
    pub fn extract_from(obj: &Bound<'py, PyAny>) -> BridgeResult<Self> {
        let tensor = read_ragged(obj, true)?;
        if !T::accepts(tensor.dtype()) {
            return Err(Error::Mismatch {
                what: "ragged argument".into(),
                expected: T::DTYPE.name(),
                got: tensor.dtype().name(),
            }
            .into());
        }
        Ok(RaggedArg {
            tensor,
            _marker: PhantomData,
        })
    }
}

impl<'a, 'py, T: crate::ArgElement> FromPyObject<'a, 'py> for RaggedArg<'py, T> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(Self::extract_from(&obj)?)
    }
}
