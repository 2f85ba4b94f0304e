//! The Flight server from Python, and the record-batch conversions the Python client uses.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::{Array, RecordBatchReader, StructArray};
use arrowbridge::ipc::tensors_of;
use arrowbridge_flight::{start, RunningServer, ServerConfig};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyDict, PyList, PyTuple};

use crate::capsule::import_batch_stream;
use crate::errors::{no_panic, python_error, BridgeResult};
use crate::numpy_output::tensor_to_numpy;

/// A failure to start or stop a server, as the exception a Python user expects: `OSError`
/// subclasses (with the errno) for an address or data directory that cannot be used.
fn server_error(e: arrowbridge_flight::FlightServerError) -> crate::errors::BridgeError {
    use arrowbridge_flight::FlightServerError as E;
    let message = e.to_string();
    match e {
        E::Core(core) => core.into(),
        E::Listen { source, .. } => match source.raw_os_error() {
            Some(errno) => python_error("ServerStartError", (errno, message)).into(),
            None => python_error("ServerStartError", (message,)).into(),
        },
        E::Io { .. } => python_error("FileError", (message,)).into(),
        E::Tls(_) => python_error("TLSConfigError", (message,)).into(),
        other => python_error("ServerStartError", (other.to_string(),)).into(),
    }
}

/// A Flight server running on background threads of this process.
#[pyclass(frozen, module = "arrowbridge._native", name = "FlightServer")]
pub struct FlightServer {
    running: Mutex<Option<RunningServer>>,
    location: String,
}

#[pymethods]
impl FlightServer {
    #[new]
    #[pyo3(signature = (host, port, *, data_dir=None, token=None, tls_cert=None, tls_key=None))]
    fn new(
        py: Python<'_>,
        host: String,
        port: u16,
        data_dir: Option<PathBuf>,
        token: Option<String>,
        tls_cert: Option<Vec<u8>>,
        tls_key: Option<Vec<u8>>,
    ) -> BridgeResult<Self> {
        let mut config = ServerConfig::new(host, port);
        config.data_dir = data_dir;
        config.token = token;
        config.tls = tls_cert.zip(tls_key);
        config.registry = Arc::new(crate::call::registry_snapshot());
        let running = py.detach(|| start(config)).map_err(server_error)?;
        let location = running.location().to_string();
        Ok(FlightServer {
            running: Mutex::new(Some(running)),
            location,
        })
    }

    /// Where clients connect: `grpc://host:port`.
    #[getter]
    fn location(&self) -> &str {
        &self.location
    }

    /// Whether the server is serving.
    #[getter]
    fn running(&self) -> bool {
        self.running
            .lock()
            .map(|r| r.as_ref().is_some_and(RunningServer::is_running))
            .unwrap_or(false)
    }

    /// Stops the server (finishing calls under way); calling it again does nothing.
    fn shutdown(&self, py: Python<'_>) -> BridgeResult<()> {
        let server = self.running.lock().ok().and_then(|mut r| r.take());
        if let Some(mut server) = server {
            py.detach(|| server.shutdown()).map_err(server_error)?;
        }
        Ok(())
    }
}

/// The (schema, array) capsules of the record batches that carry `arrays` under `names` in
/// messages of at most `max_bytes` (see `arrowbridge::ipc::wire_batches`): rows cut into
/// slices, or every column laid out flat when one row would not fit.
#[pyfunction]
pub fn wire_capsules<'py>(
    py: Python<'py>,
    names: Vec<String>,
    arrays: &Bound<'py, PyList>,
    max_bytes: usize,
) -> BridgeResult<Vec<Bound<'py, PyTuple>>> {
    no_panic("wire_batches", || {
        let tensors = arrays
            .iter()
            .map(|a| crate::convert::column_input(&a))
            .collect::<BridgeResult<Vec<_>>>()?;
        let columns: Vec<(&str, &arrowbridge::ArrowTensor)> =
            names.iter().map(String::as_str).zip(&tensors).collect();
        let (_, batches) =
            py.detach(|| arrowbridge::ipc::wire_batches(&columns, max_bytes.max(1)))?;
        batches
            .into_iter()
            .map(|batch| {
                let schema = FFI_ArrowSchema::try_from(batch.schema().as_ref())?;
                let array = FFI_ArrowArray::new(&StructArray::from(batch).to_data());
                let schema = PyCapsule::new_with_value(py, schema, c"arrow_schema")?;
                let array = PyCapsule::new_with_value(py, array, c"arrow_array")?;
                Ok(PyTuple::new(py, [schema, array])?)
            })
            .collect()
    })
}

/// Every column of a table-like object (anything with `__arrow_c_stream__` whose items are
/// record batches) as NumPy arrays, honouring arrowbridge's field metadata.
#[pyfunction]
pub fn stream_to_arrays<'py>(data: &Bound<'py, PyAny>) -> BridgeResult<Bound<'py, PyDict>> {
    no_panic("stream_to_arrays", || {
        let py = data.py();
        let reader = import_batch_stream(data)?;
        let schema = reader.schema();
        let batches = reader.collect::<Result<Vec<_>, _>>()?;
        let dict = PyDict::new(py);
        for (name, tensor) in tensors_of(&schema, &batches)? {
            dict.set_item(name, tensor_to_numpy(py, &tensor, false)?)?;
        }
        Ok(dict)
    })
}
