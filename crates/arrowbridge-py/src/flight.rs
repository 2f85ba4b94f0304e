//! The Flight server from Python, and the record-batch conversions the Python client uses.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::RecordBatchReader;
use arrowbridge::ipc::tensors_of;
use arrowbridge::ArrowTensor;
use arrowbridge_flight::limits::{scoped, CallLimits};
use arrowbridge_flight::{
    start, Arg, Client, ClientError, ClientOptions, ItemForm, ItemInfo, RunningServer, ServerConfig,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use arrowbridge_pyo3::capsule::import_batch_stream;
use arrowbridge_pyo3::errors::{no_panic, python_error, BridgeResult};
use arrowbridge_pyo3::numpy_output::tensor_to_numpy;

/// A failure to start or stop a server, as the exception a Python user expects: `OSError`
/// subclasses (with the errno) for an address or data directory that cannot be used.
fn server_error(e: arrowbridge_flight::FlightServerError) -> arrowbridge_pyo3::errors::BridgeError {
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
    #[pyo3(signature = (host, port, *, unix=None, data_dir=None, token=None, tls_cert=None, tls_key=None, shm=true, max_bytes=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        host: String,
        port: u16,
        unix: Option<PathBuf>,
        data_dir: Option<PathBuf>,
        token: Option<String>,
        tls_cert: Option<Vec<u8>>,
        tls_key: Option<Vec<u8>>,
        shm: bool,
        max_bytes: Option<usize>,
    ) -> BridgeResult<Self> {
        let mut config = ServerConfig::new(host, port);
        config.shm &= shm;
        config.unix = unix;
        config.data_dir = data_dir;
        config.token = token;
        config.tls = tls_cert.zip(tls_key);
        if let Some(max_bytes) = max_bytes {
            config.max_bytes = max_bytes;
        }
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

/// A client error as the exception of `arrowbridge.errors` its gRPC status code (and, where
/// the code alone is ambiguous, the server's error kind) calls for; never chosen by message.
fn client_error(e: ClientError) -> arrowbridge_pyo3::errors::BridgeError {
    use tonic::Code;
    let message = e.to_string();
    let class = match e {
        ClientError::Local(core) => return core.into(),
        ClientError::Location(_) => "InvalidLocationError",
        ClientError::Timeout { .. } => "FlightTimeoutError",
        ClientError::Interrupted(_) => {
            // The exception the signal handler raised (KeyboardInterrupt for Ctrl+C).
            let raised = INTERRUPT.with(|pending| pending.borrow_mut().take());
            return raised
                .unwrap_or_else(|| pyo3::exceptions::PyKeyboardInterrupt::new_err(message))
                .into();
        }
        ClientError::Remote { code, kind, .. } => match (code, kind.as_deref()) {
            (_, Some(arrowbridge_flight::KIND_REPLACED)) => "ItemReplacedError",
            (Code::Unauthenticated | Code::PermissionDenied, _) => "AuthenticationError",
            (Code::Unavailable, _) => "ServerUnavailableError",
            (Code::NotFound, _) => "RemoteNotFoundError",
            (_, Some(arrowbridge_flight::KIND_STORAGE)) => "RemoteStorageError",
            (Code::ResourceExhausted, Some(arrowbridge_flight::KIND_OUT_OF_MEMORY)) => {
                "RemoteOutOfMemoryError"
            }
            (Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition, _) => {
                "RemoteInvalidError"
            }
            _ => "FlightCallError",
        },
        _ => "FlightCallError",
    };
    python_error(class, (message,)).into()
}

thread_local! {
    /// The exception a signal handler raised while a call of this thread waited.
    static INTERRUPT: RefCell<Option<PyErr>> = const { RefCell::new(None) };
}

/// Whether this is the process's main thread, the one Python runs signal handlers on.
fn on_main_thread() -> bool {
    // SAFETY: neither call has preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) == libc::getpid() as libc::c_long }
}

/// A timeout in seconds as a duration: `None` stays `None`; negative, NaN or infinite
/// values are refused.
fn seconds(timeout: Option<f64>) -> BridgeResult<Option<Duration>> {
    timeout
        .map(|t| {
            Duration::try_from_secs_f64(t).map_err(|_| {
                arrowbridge_pyo3::errors::BridgeError::from(arrowbridge::Error::invalid(
                    "timeout",
                    format!("{t} is not a number of seconds >= 0"),
                ))
            })
        })
        .transpose()
}

/// Runs `call` without the GIL, within `timeout` (else the client's default), and
/// interruptible: on the main thread, Python's signal handlers run every 20 ms while the
/// call waits, and one that raises (Ctrl+C's KeyboardInterrupt) cancels the call.
fn limited<T: Send>(
    py: Python<'_>,
    timeout: Option<Duration>,
    call: impl FnOnce() -> T + Send,
) -> T {
    let main = on_main_thread();
    py.detach(move || {
        let interrupted = main.then(|| {
            Rc::new(|| {
                Python::attach(|py| match py.check_signals() {
                    Ok(()) => false,
                    Err(raised) => {
                        INTERRUPT.with(|pending| *pending.borrow_mut() = Some(raised));
                        true
                    }
                })
            }) as Rc<dyn Fn() -> bool>
        });
        scoped(
            CallLimits {
                timeout,
                interrupted,
            },
            call,
        )
    })
}

/// The client's error once it is closed.
fn closed() -> arrowbridge_pyo3::errors::BridgeError {
    python_error(
        "FlightCallError",
        ("the client is closed (by close() or its with block); connect() again",),
    )
    .into()
}

/// A native Flight client; `arrowbridge.Client` wraps it. Every call releases the GIL while
/// data moves.
#[pyclass(frozen, module = "arrowbridge._native", name = "FlightClient")]
pub struct FlightClient {
    client: Mutex<Option<Arc<Client>>>,
}

impl FlightClient {
    fn client(&self) -> BridgeResult<Arc<Client>> {
        self.client
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .ok_or_else(closed)
    }
}

/// NumPy arrays of received tensors: writeable when each owns its buffer alone, read-only
/// when they view sealed shared memory.
fn arrays<'py>(
    py: Python<'py>,
    columns: &[(String, ArrowTensor)],
    writeable: bool,
) -> BridgeResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, tensor) in columns {
        dict.set_item(name, tensor_to_numpy(py, tensor, writeable)?)?;
    }
    Ok(dict)
}

fn info_dict<'py>(py: Python<'py>, info: &ItemInfo) -> BridgeResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("name", &info.name)?;
    dict.set_item("rows", info.rows)?;
    dict.set_item("bytes", info.bytes)?;
    // An IPC stream of the schema alone, which pyarrow.ipc.read_schema reads.
    let schema = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &info.schema)
        .and_then(|w| w.into_inner())
        .map_err(arrowbridge::Error::from)?;
    dict.set_item("schema_ipc", PyBytes::new(py, &schema))?;
    dict.set_item(
        "columns",
        serde_json::to_string(&info.columns).unwrap_or_default(),
    )?;
    dict.set_item("endpoints", info.endpoints)?;
    Ok(dict)
}

#[pymethods]
impl FlightClient {
    #[new]
    #[pyo3(signature = (location, *, token=None, tls_root_certs=None, shm=None, timeout=None, trusted=Vec::new()))]
    fn new(
        location: &str,
        token: Option<String>,
        tls_root_certs: Option<Vec<u8>>,
        shm: Option<bool>,
        timeout: Option<f64>,
        trusted: Vec<String>,
    ) -> BridgeResult<Self> {
        let options = ClientOptions {
            token,
            tls_root_certs,
            shm,
            timeout: seconds(timeout)?,
            trusted,
        };
        let client = Client::connect(location, options).map_err(client_error)?;
        Ok(FlightClient {
            client: Mutex::new(Some(Arc::new(client))),
        })
    }

    /// Stores the arrays under `name` in form `form` ("array", "dict" or "table").
    #[pyo3(signature = (name, names, arrays, form, *, timeout=None))]
    fn put(
        &self,
        py: Python<'_>,
        name: &str,
        names: Vec<String>,
        arrays: &Bound<'_, PyList>,
        form: &str,
        timeout: Option<f64>,
    ) -> BridgeResult<usize> {
        no_panic("put", || {
            let client = self.client()?;
            let timeout = seconds(timeout)?;
            let form = match form {
                "array" => ItemForm::Array,
                "dict" => ItemForm::Dict,
                _ => ItemForm::Table,
            };
            let tensors = arrays
                .iter()
                .map(|a| arrowbridge_pyo3::input::column_input(&a))
                .collect::<BridgeResult<Vec<_>>>()?;
            let columns: Vec<(&str, &ArrowTensor)> =
                names.iter().map(String::as_str).zip(&tensors).collect();
            limited(py, timeout, || client.put(name, &columns, form)).map_err(client_error)
        })
    }

    /// `(form, {name: array})` of the item stored under `name`.
    #[pyo3(signature = (name, *, timeout=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        timeout: Option<f64>,
    ) -> BridgeResult<(&'static str, Bound<'py, PyDict>)> {
        no_panic("get", || {
            let client = self.client()?;
            let timeout = seconds(timeout)?;
            let item = limited(py, timeout, || client.get(name)).map_err(client_error)?;
            Ok((item.form.name(), arrays(py, &item.columns, !item.shared)?))
        })
    }

    /// The server's items: dicts of name, rows, bytes, schema_ipc, columns (JSON), endpoints.
    #[pyo3(signature = (*, timeout=None))]
    fn list<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> BridgeResult<Vec<Bound<'py, PyDict>>> {
        no_panic("list", || {
            let client = self.client()?;
            let timeout = seconds(timeout)?;
            let infos = limited(py, timeout, || client.list()).map_err(client_error)?;
            infos.iter().map(|i| info_dict(py, i)).collect()
        })
    }

    /// What is stored under `name` (see `list`).
    #[pyo3(signature = (name, *, timeout=None))]
    fn info<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        timeout: Option<f64>,
    ) -> BridgeResult<Bound<'py, PyDict>> {
        no_panic("info", || {
            let client = self.client()?;
            let timeout = seconds(timeout)?;
            let info = limited(py, timeout, || client.info(name)).map_err(client_error)?;
            info_dict(py, &info)
        })
    }

    /// Stores the map of an item sharded over several servers: `schema_ipc` is the shards'
    /// schema (an IPC stream, as `info` gives it), `map_json` the map
    /// (`arrowbridge_flight::shards::ShardMap` as JSON).
    #[pyo3(signature = (name, schema_ipc, map_json, *, timeout=None))]
    fn put_map(
        &self,
        py: Python<'_>,
        name: &str,
        schema_ipc: Vec<u8>,
        map_json: &str,
        timeout: Option<f64>,
    ) -> BridgeResult<()> {
        no_panic("put_map", || {
            let client = self.client()?;
            let timeout = seconds(timeout)?;
            let what = format!("the shard map of {name:?}");
            let schema = arrow_ipc::reader::StreamReader::try_new(&schema_ipc[..], None)
                .map_err(|e| arrowbridge::Error::invalid(&what, format!("bad schema: {e}")))?
                .schema();
            let map: arrowbridge_flight::shards::ShardMap = serde_json::from_str(map_json)
                .map_err(|e| arrowbridge::Error::invalid(&what, e.to_string()))?;
            limited(py, timeout, || client.put_map(name, &schema, &map)).map_err(client_error)
        })
    }

    /// Deletes `name`.
    #[pyo3(signature = (name, *, timeout=None))]
    fn delete(&self, py: Python<'_>, name: &str, timeout: Option<f64>) -> BridgeResult<()> {
        no_panic("delete", || {
            let client = self.client()?;
            let timeout = seconds(timeout)?;
            limited(py, timeout, || client.delete(name)).map_err(client_error)
        })
    }

    /// The server's kernels: name -> signature.
    #[pyo3(signature = (*, timeout=None))]
    fn kernels(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
    ) -> BridgeResult<std::collections::BTreeMap<String, String>> {
        no_panic("kernels", || {
            let client = self.client()?;
            let timeout = seconds(timeout)?;
            limited(py, timeout, || client.kernels()).map_err(client_error)
        })
    }

    /// The server's health, as JSON text.
    #[pyo3(signature = (*, timeout=None))]
    fn health(&self, py: Python<'_>, timeout: Option<f64>) -> BridgeResult<String> {
        no_panic("health", || {
            let client = self.client()?;
            let timeout = seconds(timeout)?;
            let health = limited(py, timeout, || client.health()).map_err(client_error)?;
            Ok(health.to_string())
        })
    }

    /// Runs DoAction `kind`; the body of its first result.
    #[pyo3(signature = (kind, body, *, timeout=None))]
    fn action<'py>(
        &self,
        py: Python<'py>,
        kind: &str,
        body: Vec<u8>,
        timeout: Option<f64>,
    ) -> BridgeResult<Bound<'py, PyBytes>> {
        no_panic("action", || {
            let client = self.client()?;
            let timeout = seconds(timeout)?;
            let result =
                limited(py, timeout, || client.action(kind, body)).map_err(client_error)?;
            Ok(PyBytes::new(py, &result))
        })
    }

    /// Runs `kernel` on `args` (each `("array", x)` or `("stored", name)`) with the
    /// keyword parameters `params`; the outputs as NumPy arrays.
    #[pyo3(signature = (kernel, args, params=None, *, timeout=None))]
    fn call<'py>(
        &self,
        py: Python<'py>,
        kernel: &str,
        args: Vec<(String, Bound<'py, PyAny>)>,
        params: Option<&Bound<'py, PyDict>>,
        timeout: Option<f64>,
    ) -> BridgeResult<Vec<Bound<'py, PyAny>>> {
        no_panic("call", || {
            let client = self.client()?;
            let timeout = seconds(timeout)?;
            let params = crate::call::params(kernel, params)?;
            let mut tensors = Vec::new();
            let mut stored = Vec::new();
            for (kind, value) in &args {
                if kind == "stored" {
                    stored.push(Some(value.extract::<String>()?));
                    tensors.push(None);
                } else {
                    stored.push(None);
                    tensors.push(Some(arrowbridge_pyo3::input::column_input(value)?));
                }
            }
            let args: Vec<Arg<'_>> = stored
                .iter()
                .zip(&tensors)
                .map(|(s, t)| match (s, t) {
                    (Some(name), _) => Arg::Stored(name),
                    (None, Some(t)) => Arg::Array(t),
                    (None, None) => unreachable!("every argument is one or the other"),
                })
                .collect();
            let outputs = limited(py, timeout, || client.call(kernel, &args, &params))
                .map_err(client_error)?;
            outputs
                .iter()
                .map(|t| tensor_to_numpy(py, t, true))
                .collect()
        })
    }

    /// Stops every call of this client under way, on any thread (each raises
    /// KeyboardInterrupt); later calls run as usual.
    fn cancel(&self) -> BridgeResult<()> {
        self.client()?.cancel();
        Ok(())
    }

    /// Lets go of the connection in a forked child without closing it: the runtime's
    /// threads exist only in the parent, so it is neither used nor dropped here.
    fn abandon(&self) {
        let client = self.client.lock().ok().and_then(|mut c| c.take());
        std::mem::forget(client);
    }

    /// Closes the connection; idempotent.
    fn close(&self, py: Python<'_>) {
        let client = self.client.lock().ok().and_then(|mut c| c.take());
        // The runtime stops (joining its threads) without the GIL held.
        py.detach(move || drop(client));
    }
}
