//! `write_ipc`, `read_ipc` and friends: Arrow IPC files and streams from Python.

use std::path::PathBuf;

use arrow_array::RecordBatchReader;
use arrowbridge::ipc::{self, Column, Compression, IpcData, IpcFormat, WriteOptions};
use arrowbridge::Error;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use arrowbridge_pyo3::internal::capsule::import_batch_stream;
use arrowbridge_pyo3::internal::input::columns_batch;
use arrowbridge_pyo3::internal::numpy_output::tensor_to_numpy;
use arrowbridge_pyo3::internal::ragged::rows_to_numpy;
use arrowbridge_pyo3::{no_panic, BridgeResult};

fn write_options(format: &str, compression: Option<&str>) -> PyResult<WriteOptions> {
    let format = match format {
        "file" => IpcFormat::File,
        "stream" => IpcFormat::Stream,
        other => {
            return Err(PyValueError::new_err(format!(
                "format must be \"file\" or \"stream\", not {other:?}"
            )))
        }
    };
    let compression = match compression {
        None => None,
        Some("lz4") => Some(Compression::Lz4),
        Some("zstd") => Some(Compression::Zstd),
        Some(other) => {
            return Err(PyValueError::new_err(format!(
                "compression must be None, \"lz4\" or \"zstd\", not {other:?}"
            )))
        }
    };
    Ok(WriteOptions {
        format,
        compression,
    })
}

/// Writes named arrays (NumPy or Arrow) to `path`.
#[pyfunction]
#[pyo3(signature = (path, names, arrays, *, format="file", compression=None))]
pub fn write_arrays(
    py: Python<'_>,
    path: PathBuf,
    names: Vec<String>,
    arrays: &Bound<'_, PyList>,
    format: &str,
    compression: Option<&str>,
) -> BridgeResult<()> {
    no_panic("write_ipc", || {
        let options = write_options(format, compression)?;
        let batch = columns_batch(&names, arrays)?;
        py.detach(|| ipc::write_batch(&path, &batch, &options))?;
        Ok(())
    })
}

/// Writes every batch of an object with `__arrow_c_stream__` (a pyarrow Table or
/// RecordBatchReader, a polars DataFrame, …) to `path`, as it is.
#[pyfunction]
#[pyo3(signature = (path, data, *, format="file", compression=None))]
pub fn write_stream(
    py: Python<'_>,
    path: PathBuf,
    data: &Bound<'_, PyAny>,
    format: &str,
    compression: Option<&str>,
) -> BridgeResult<()> {
    no_panic("write_ipc", || {
        let options = write_options(format, compression)?;
        let reader = import_batch_stream(data)?;
        let schema = reader.schema();
        py.detach(move || {
            ipc::write_atomically(&path, |w| {
                ipc::write_batches(w, &schema, reader.map(|b| b.map_err(Error::from)), &options)
            })
        })?;
        Ok(())
    })
}

/// An open IPC file or stream whose batches become NumPy arrays on request
/// (``arrowbridge.open_ipc(path)``).
///
/// >>> import numpy as np, pyarrow as pa, arrowbridge, tempfile, os
/// >>> tmp = tempfile.TemporaryDirectory()
/// >>> path = os.path.join(tmp.name, "x.arrow")
/// >>> arrowbridge.write_ipc(path, pa.table({"x": [1.0, 2.0, 3.0]}))
/// >>> reader = arrowbridge.IpcReader(path)
/// >>> reader.format, reader.num_batches, reader.num_rows, reader.names
/// ('file', 1, 3, ['x'])
/// >>> tmp.cleanup()
#[pyclass(frozen, module = "arrowbridge._native", name = "IpcReader")]
pub struct IpcReader {
    data: IpcData,
}

/// Columns as a dict of NumPy arrays: a tensor as one array, a ragged column as a list of
/// arrays (one per row, views of each batch).
fn columns_to_dict<'py>(
    py: Python<'py>,
    columns: Vec<(String, Column)>,
) -> BridgeResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, column) in columns {
        match column {
            Column::Tensor(tensor) => dict.set_item(name, tensor_to_numpy(py, &tensor, false)?)?,
            Column::Ragged(parts) => dict.set_item(name, rows_to_numpy(py, &parts, false)?)?,
        }
    }
    Ok(dict)
}

#[pymethods]
impl IpcReader {
    #[new]
    #[pyo3(signature = (path, *, mmap=true, columns=None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        mmap: bool,
        columns: Option<Vec<String>>,
    ) -> BridgeResult<Self> {
        no_panic("read_ipc", || {
            let data = py.detach(|| ipc::read_ipc_columns(&path, mmap, columns.as_deref()))?;
            Ok(IpcReader { data })
        })
    }

    /// Number of record batches.
    #[getter]
    fn num_batches(&self) -> usize {
        self.data.num_batches()
    }

    /// Total rows.
    #[getter]
    fn num_rows(&self) -> usize {
        self.data.num_rows()
    }

    /// "file" or "stream".
    #[getter]
    fn format(&self) -> &'static str {
        match self.data.format() {
            IpcFormat::File => "file",
            IpcFormat::Stream => "stream",
        }
    }

    /// (address, length) of the memory mapping, or None when the file was read into memory.
    #[getter]
    fn mapping(&self) -> Option<(usize, usize)> {
        self.data.mapping()
    }

    /// Column names.
    #[getter]
    fn names(&self) -> Vec<String> {
        self.data
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    /// The Arrow schema, as a string.
    #[getter]
    fn schema(&self) -> String {
        self.data.schema().to_string()
    }

    /// All columns as NumPy arrays (views of the mapping for a one-batch file).
    ///
    /// >>> import numpy as np, arrowbridge, tempfile, os
    /// >>> tmp = tempfile.TemporaryDirectory()
    /// >>> path = os.path.join(tmp.name, "x.arrow")
    /// >>> arrowbridge.write_ipc(path, {"x": np.arange(6).reshape(2, 3)})
    /// >>> arrowbridge.open_ipc(path).read_all()
    /// {'x': array([[0, 1, 2],
    ///        [3, 4, 5]])}
    /// >>> tmp.cleanup()
    fn read_all<'py>(&self, py: Python<'py>) -> BridgeResult<Bound<'py, PyDict>> {
        no_panic("read_ipc", || {
            let columns = py.detach(|| self.data.columns())?;
            columns_to_dict(py, columns)
        })
    }

    /// The columns of batch `index` as NumPy arrays: always views.
    ///
    /// >>> import pyarrow as pa, arrowbridge, tempfile, os
    /// >>> tmp = tempfile.TemporaryDirectory()
    /// >>> path = os.path.join(tmp.name, "b.arrow")
    /// >>> batches = [pa.record_batch({"x": [1, 2]}), pa.record_batch({"x": [3]})]
    /// >>> arrowbridge.write_ipc(path, pa.Table.from_batches(batches))
    /// >>> arrowbridge.open_ipc(path).read_batch(1)
    /// {'x': array([3])}
    /// >>> tmp.cleanup()
    fn read_batch<'py>(&self, py: Python<'py>, index: usize) -> BridgeResult<Bound<'py, PyDict>> {
        no_panic("read_ipc", || {
            let columns = py.detach(|| self.data.batch_columns(index))?;
            columns_to_dict(py, columns)
        })
    }

    /// One dict per column: name, dtype, shape, nbytes, zero_copy (whether reading it gives a
    /// view of the mapping rather than a copy) and error. It reads the schema and the
    /// batches' lengths only: nothing is decompressed or concatenated. A column that
    /// arrowbridge cannot carry (strings, decimals, nulls, ...) has dtype and shape None and
    /// the reason in error.
    ///
    /// >>> import numpy as np, pyarrow as pa, arrowbridge, tempfile, os
    /// >>> tmp = tempfile.TemporaryDirectory()
    /// >>> path = os.path.join(tmp.name, "d.arrow")
    /// >>> arrowbridge.write_ipc(path, {"e": np.ones((4, 2), np.float32)})
    /// >>> arrowbridge.open_ipc(path).describe()
    /// [{'name': 'e', 'dtype': 'float32', 'shape': (4, 2), 'nbytes': 32, 'zero_copy': True, 'error': None}]
    /// >>> arrowbridge.write_ipc(path, pa.table({"s": ["a", "b"]}))
    /// >>> arrowbridge.open_ipc(path).describe()[0]["error"]
    /// '...: unsupported Arrow type Utf8'
    /// >>> tmp.cleanup()
    fn describe<'py>(&self, py: Python<'py>) -> BridgeResult<Vec<Bound<'py, PyDict>>> {
        self.data
            .describe()
            .into_iter()
            .map(|column| {
                let dict = PyDict::new(py);
                dict.set_item("name", column.name)?;
                dict.set_item("dtype", column.dtype.map(|d| d.name()))?;
                let shape = match (&column.error, column.ragged_shape) {
                    (None, Some(ragged)) => Some(PyTuple::new(py, ragged)?),
                    (None, None) => Some(PyTuple::new(py, column.shape)?),
                    (Some(_), _) => None,
                };
                dict.set_item("shape", shape)?;
                dict.set_item("nbytes", column.nbytes)?;
                dict.set_item("zero_copy", column.zero_copy)?;
                dict.set_item("error", column.error)?;
                Ok(dict)
            })
            .collect()
    }
}

/// A file written atomically, as ``write_ipc`` writes: ``with AtomicWrite(path) as tmp:``
/// gives a new temporary file next to ``path`` to write by name; a block that ends without
/// an exception flushes it to disk and renames it to ``path``, keeping the permission bits
/// of the file it replaces; an exception removes it, and ``path`` is left as it was.
///
/// >>> import numpy as np, arrowbridge, tempfile, os
/// >>> tmp = tempfile.TemporaryDirectory()
/// >>> path = os.path.join(tmp.name, "x.npy")
/// >>> with arrowbridge.AtomicWrite(path) as new, open(new, "wb") as f:
/// ...     np.save(f, np.arange(3))
/// >>> np.load(path).tolist()
/// [0, 1, 2]
/// >>> with arrowbridge.AtomicWrite(path) as new, open(new, "wb") as f:
/// ...     np.save(f, np.arange(5))
/// ...     raise RuntimeError("the writer failed")
/// Traceback (most recent call last):
/// RuntimeError: the writer failed
/// >>> np.load(path).tolist(), os.listdir(tmp.name)
/// ([0, 1, 2], ['x.npy'])
/// >>> tmp.cleanup()
#[pyclass(frozen, module = "arrowbridge._native", name = "AtomicWrite")]
pub struct AtomicWrite {
    temp: PathBuf,
    file: std::sync::Mutex<Option<ipc::AtomicFile>>,
}

#[pymethods]
impl AtomicWrite {
    #[new]
    fn new(path: PathBuf) -> BridgeResult<Self> {
        let file = ipc::AtomicFile::create(&path)?;
        Ok(AtomicWrite {
            temp: file.temp_path().to_path_buf(),
            file: std::sync::Mutex::new(Some(file)),
        })
    }

    fn __enter__(&self) -> PathBuf {
        self.temp.clone()
    }

    #[pyo3(signature = (exc_type, _exc_value, _traceback))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc_value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> BridgeResult<bool> {
        let file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match file {
            // Committed only once: a second `with` of the same object writes nothing.
            Some(file) if exc_type.is_none() => py.detach(|| file.commit())?,
            _ => {} // dropped: the temporary file is removed
        }
        Ok(false)
    }
}
