//! The Flight server from Python, and the record-batch conversions the Python client uses.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::{Array, RecordBatchReader, StructArray};
use arrowbridge::ipc::tensors_of;
use arrowbridge::Error;
use arrowbridge_flight::{start, RunningServer, ServerConfig};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyDict, PyList, PyTuple};

use crate::capsule::import_batch_stream;
use crate::convert::columns_batch;
use crate::errors::{no_panic, BridgeResult};
use crate::numpy_output::tensor_to_numpy;

fn server_error(e: arrowbridge_flight::FlightServerError) -> crate::errors::BridgeError {
    match e {
        arrowbridge_flight::FlightServerError::Core(core) => core.into(),
        other => Error::invalid("Flight server", other.to_string()).into(),
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

/// The (schema, array) capsules of one record batch holding `arrays` under `names` (rows
/// when they share axis 0, whole-array elements otherwise), for `pa.RecordBatch`.
#[pyfunction]
pub fn record_batch_capsules<'py>(
    py: Python<'py>,
    names: Vec<String>,
    arrays: &Bound<'py, PyList>,
) -> BridgeResult<Bound<'py, PyTuple>> {
    no_panic("record_batch", || {
        let batch = columns_batch(&names, arrays)?;
        let schema = FFI_ArrowSchema::try_from(batch.schema().as_ref())?;
        let array = FFI_ArrowArray::new(&StructArray::from(batch).to_data());
        let schema = PyCapsule::new_with_value(py, schema, c"arrow_schema")?;
        let array = PyCapsule::new_with_value(py, array, c"arrow_array")?;
        Ok(PyTuple::new(py, [schema, array])?)
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
