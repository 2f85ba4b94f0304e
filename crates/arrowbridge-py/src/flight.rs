//! The Flight server from Python, and the record-batch conversions the Python client uses.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::RecordBatchReader;
use arrowbridge::ipc::{tensors_of, Column};
use arrowbridge::ArrowTensor;
use arrowbridge_flight::limits::{scoped, CallLimits};
use arrowbridge_flight::{
    start, Arg, Client, ClientError, ClientOptions, ClientResult, Item, ItemForm, ItemInfo,
    ItemStream, PutStream, RunningServer, Selection, ServerConfig,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use arrowbridge_pyo3::internal::capsule::import_batch_stream;
use arrowbridge_pyo3::internal::numpy_output::tensor_to_numpy;
use arrowbridge_pyo3::internal::python_error;
use arrowbridge_pyo3::internal::ragged::rows_to_numpy;
use arrowbridge_pyo3::{no_panic, BridgeError, BridgeResult};
use pyo3::exceptions as builtin;

use crate::aio::{spawn_call, Done, PendingCall};
use crate::fork::ForkBound;

/// A failure to start or stop a server, as the exception a Python user expects: `OSError`
/// subclasses (with the errno) for an address or data directory that cannot be used.
fn server_error(e: arrowbridge_flight::FlightServerError) -> arrowbridge_pyo3::BridgeError {
    use arrowbridge_flight::FlightServerError as E;
    let message = e.to_string();
    match e {
        E::Core(core) => core.into(),
        E::Listen { source, .. } => match source.raw_os_error() {
            Some(errno) => {
                python_error::<builtin::PyOSError, _>("ServerStartError", (errno, message)).into()
            }
            None => python_error::<builtin::PyOSError, _>("ServerStartError", (message,)).into(),
        },
        E::Io { .. } => python_error::<builtin::PyOSError, _>("FileError", (message,)).into(),
        E::Tls(_) => python_error::<builtin::PyValueError, _>("TLSConfigError", (message,)).into(),
        other => {
            python_error::<builtin::PyOSError, _>("ServerStartError", (other.to_string(),)).into()
        }
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
pub(crate) fn client_error(e: ClientError) -> arrowbridge_pyo3::BridgeError {
    use tonic::Code;
    let message = e.to_string();
    let message = (message,);
    match e {
        ClientError::Local(core) => core.into(),
        ClientError::Location(_) => {
            python_error::<builtin::PyValueError, _>("InvalidLocationError", message).into()
        }
        ClientError::Timeout { .. } => {
            python_error::<builtin::PyTimeoutError, _>("FlightTimeoutError", message).into()
        }
        ClientError::Interrupted(_) => {
            // The exception the signal handler raised (KeyboardInterrupt for Ctrl+C).
            let raised = INTERRUPT.with(|pending| pending.borrow_mut().take());
            raised
                .unwrap_or_else(|| builtin::PyKeyboardInterrupt::new_err(message))
                .into()
        }
        ClientError::Remote { code, kind, .. } => match (code, kind.as_deref()) {
            (_, Some(arrowbridge_flight::KIND_REPLACED)) => {
                python_error::<builtin::PyLookupError, _>("ItemReplacedError", message)
            }
            (Code::Unauthenticated | Code::PermissionDenied, _) => {
                python_error::<builtin::PyPermissionError, _>("AuthenticationError", message)
            }
            (Code::Unavailable, _) => {
                python_error::<builtin::PyConnectionError, _>("ServerUnavailableError", message)
            }
            (Code::NotFound, _) => {
                python_error::<builtin::PyLookupError, _>("RemoteNotFoundError", message)
            }
            (_, Some(arrowbridge_flight::KIND_STORAGE)) => {
                python_error::<builtin::PyOSError, _>("RemoteStorageError", message)
            }
            (Code::ResourceExhausted, Some(arrowbridge_flight::KIND_OUT_OF_MEMORY)) => {
                python_error::<builtin::PyMemoryError, _>("RemoteOutOfMemoryError", message)
            }
            (Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition, _) => {
                python_error::<builtin::PyValueError, _>("RemoteInvalidError", message)
            }
            _ => python_error::<builtin::PyRuntimeError, _>("FlightCallError", message),
        }
        .into(),
        _ => python_error::<builtin::PyRuntimeError, _>("FlightCallError", message).into(),
    }
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

/// A timeout in seconds as a duration: `None` and infinity mean no deadline; negative or
/// NaN values are refused.
fn seconds(timeout: Option<f64>) -> BridgeResult<Option<Duration>> {
    match timeout {
        None => Ok(None),
        Some(t) if t == f64::INFINITY => Ok(None),
        Some(t) => Duration::try_from_secs_f64(t).map(Some).map_err(|_| {
            python_error::<builtin::PyValueError, _>(
                "InvalidArgumentError",
                (format!(
                    "timeout: {t} is not a number of seconds >= 0 (None or inf: no deadline)"
                ),),
            )
            .into()
        }),
    }
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
fn closed() -> arrowbridge_pyo3::BridgeError {
    python_error::<builtin::PyRuntimeError, _>(
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
/// A ragged column is a list of arrays, each a read-only view of the received values.
fn arrays<'py>(
    py: Python<'py>,
    columns: &[(String, Column)],
    writeable: bool,
) -> BridgeResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, column) in columns {
        match column {
            Column::Tensor(tensor) => {
                dict.set_item(name, tensor_to_numpy(py, tensor, writeable)?)?
            }
            Column::Ragged(parts) => dict.set_item(name, rows_to_numpy(py, parts, false)?)?,
        }
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
    dict.set_item("version", info.version)?;
    Ok(dict)
}

#[pymethods]
impl FlightClient {
    #[new]
    #[pyo3(signature = (location, *, token=None, tls_root_certs=None, shm=None, timeout=None, trusted=Vec::new(), background=false))]
    fn new(
        location: &str,
        token: Option<String>,
        tls_root_certs: Option<Vec<u8>>,
        shm: Option<bool>,
        timeout: Option<f64>,
        trusted: Vec<String>,
        background: bool,
    ) -> BridgeResult<Self> {
        let options = ClientOptions {
            token,
            tls_root_certs,
            shm,
            timeout: seconds(timeout)?,
            trusted,
            background,
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
            let columns = any_columns(arrays)?;
            let columns: Vec<(&str, &Column)> =
                names.iter().map(String::as_str).zip(&columns).collect();
            limited(py, timeout, || client.put_columns(name, &columns, form)).map_err(client_error)
        })
    }

    /// Starts a put of `name` (form "array", "dict" or "table") whose batches arrive one by
    /// one (`FlightPut.send`).
    fn put_stream(&self, name: &str, form: &str) -> BridgeResult<FlightPut> {
        no_panic("put", || {
            let client = self.client()?;
            let put = client
                .put_stream(name, item_form(form))
                .map_err(client_error)?;
            Ok(FlightPut {
                open: ForkBound::new(PutParts {
                    client,
                    put: Arc::new(tokio::sync::Mutex::new(Some(put))),
                }),
            })
        })
    }

    /// `(form, {name: array})` of the item stored under `name`, or of its `rows`
    /// (`(start, end)`) and `columns`.
    #[pyo3(signature = (name, *, columns=None, rows=None, timeout=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        columns: Option<Vec<String>>,
        rows: Option<(usize, usize)>,
        timeout: Option<f64>,
    ) -> BridgeResult<(&'static str, Bound<'py, PyDict>)> {
        no_panic("get", || {
            let client = self.client()?;
            let timeout = seconds(timeout)?;
            let item = if columns.is_none() && rows.is_none() {
                limited(py, timeout, || client.get(name))
            } else {
                let selection = Selection {
                    columns,
                    rows: rows.map(|(start, end)| start..end),
                };
                limited(py, timeout, || client.get_part(name, &selection))
            }
            .map_err(client_error)?;
            Ok((item.form.name(), arrays(py, &item.columns, !item.shared)?))
        })
    }

    /// A stream of the item stored under `name` (its `rows` and `columns`), in batches of
    /// `batch_rows` rows; `timeout` bounds each batch.
    #[pyo3(signature = (name, *, columns=None, rows=None, batch_rows=None, timeout=None))]
    fn stream(
        &self,
        py: Python<'_>,
        name: &str,
        columns: Option<Vec<String>>,
        rows: Option<(usize, usize)>,
        batch_rows: Option<usize>,
        timeout: Option<f64>,
    ) -> BridgeResult<FlightStream> {
        no_panic("stream", || {
            let client = self.client()?;
            let timeout = seconds(timeout)?;
            let selection = Selection {
                columns,
                rows: rows.map(|(start, end)| start..end),
            };
            let stream = limited(py, timeout, || client.stream(name, &selection, batch_rows))
                .map_err(client_error)?;
            Ok(FlightStream::new(client, stream, timeout))
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
    /// (`arrowbridge_flight::shards::ShardMap` as JSON). Returns the JSON of the map it
    /// replaced on the server, or `None`; a map older than the server's raises
    /// `ItemReplacedError`.
    #[pyo3(signature = (name, schema_ipc, map_json, *, timeout=None))]
    fn put_map(
        &self,
        py: Python<'_>,
        name: &str,
        schema_ipc: Vec<u8>,
        map_json: &str,
        timeout: Option<f64>,
    ) -> BridgeResult<Option<String>> {
        no_panic("put_map", || {
            let client = self.client()?;
            let timeout = seconds(timeout)?;
            let (schema, map) = shard_map_parts(name, &schema_ipc, map_json)?;
            let replaced = limited(py, timeout, || client.put_map(name, &schema, &map))
                .map_err(client_error)?;
            Ok(replaced.as_ref().map(map_text))
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

    /// Runs `kernel` on `args` (each `("array", x)`, `("stored", name)` or
    /// `("stored_rows", (name, version, start, end))`) with the keyword parameters
    /// `params`; the outputs as NumPy arrays.
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
            let inputs = call_inputs(&args)?;
            let args: Vec<Arg<'_>> = inputs.iter().map(CallInput::arg).collect();
            let outputs = limited(py, timeout, || client.call(kernel, &args, &params))
                .map_err(client_error)?;
            outputs
                .iter()
                .map(|t| tensor_to_numpy(py, t, true))
                .collect()
        })
    }

    /// `get` on the client's runtime: `done((form, {name: array}), None)` or
    /// `done(None, exception)`. Over gRPC (shared memory is for blocking calls).
    #[pyo3(signature = (name, done, *, columns=None, rows=None, timeout=None))]
    fn submit_get(
        &self,
        name: String,
        done: Done,
        columns: Option<Vec<String>>,
        rows: Option<(usize, usize)>,
        timeout: Option<f64>,
    ) -> BridgeResult<PendingCall> {
        let client = self.client()?;
        let selection = Selection {
            columns,
            rows: rows.map(|(start, end)| start..end),
        };
        let whole = selection.columns.is_none() && selection.rows.is_none();
        let what = format!("get {name:?}");
        Ok(spawn_call(
            &client.clone(),
            what,
            seconds(timeout)?,
            done,
            async move {
                if whole {
                    client.get_async(&name).await
                } else {
                    client.get_part_async(&name, &selection).await
                }
            },
            |py, item: arrowbridge_flight::Item| {
                let dict = arrays(py, &item.columns, !item.shared)?;
                Ok(pyo3::IntoPyObjectExt::into_py_any(
                    (item.form.name(), dict),
                    py,
                )?)
            },
        ))
    }

    /// `put` on the client's runtime: `done(rows, None)` or `done(None, exception)`.
    #[pyo3(signature = (name, names, arrays, form, done, *, timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn submit_put(
        &self,
        name: String,
        names: Vec<String>,
        arrays: &Bound<'_, PyList>,
        form: &str,
        done: Done,
        timeout: Option<f64>,
    ) -> BridgeResult<PendingCall> {
        let client = self.client()?;
        let form = item_form(form);
        let batch: Vec<(String, Column)> = names.into_iter().zip(any_columns(arrays)?).collect();
        let what = format!("put {name:?}");
        Ok(spawn_call(
            &client.clone(),
            what,
            seconds(timeout)?,
            done,
            async move {
                let refs = any_column_refs(&batch);
                client.put_columns_async(&name, &refs, form).await
            },
            |py, rows: usize| Ok(pyo3::IntoPyObjectExt::into_py_any(rows, py)?),
        ))
    }

    /// `put_map` on the client's runtime: `done(replaced_json_or_None, None)` or
    /// `done(None, exception)`.
    #[pyo3(signature = (name, schema_ipc, map_json, done, *, timeout=None))]
    fn submit_put_map(
        &self,
        name: String,
        schema_ipc: Vec<u8>,
        map_json: &str,
        done: Done,
        timeout: Option<f64>,
    ) -> BridgeResult<PendingCall> {
        let client = self.client()?;
        let (schema, map) = shard_map_parts(&name, &schema_ipc, map_json)?;
        Ok(spawn_call(
            &client.clone(),
            format!("put_map {name:?}"),
            seconds(timeout)?,
            done,
            async move { client.put_map_async(&name, &schema, &map).await },
            |py, replaced: Option<arrowbridge_flight::shards::ShardMap>| {
                Ok(pyo3::IntoPyObjectExt::into_py_any(
                    replaced.as_ref().map(map_text),
                    py,
                )?)
            },
        ))
    }

    /// `info` on the client's runtime (`done(info, None)`; `list` with `name=None`:
    /// `done([info, ...], None)`).
    #[pyo3(signature = (name, done, *, timeout=None))]
    fn submit_info(
        &self,
        name: Option<String>,
        done: Done,
        timeout: Option<f64>,
    ) -> BridgeResult<PendingCall> {
        let client = self.client()?;
        let what = name
            .as_ref()
            .map_or_else(|| "list".to_string(), |n| format!("info {n:?}"));
        Ok(spawn_call(
            &client.clone(),
            what,
            seconds(timeout)?,
            done,
            async move {
                match name {
                    Some(name) => Ok(vec![client.info_async(&name).await?]),
                    None => client.list_async().await,
                }
            },
            move |py, infos: Vec<ItemInfo>| {
                let dicts = infos
                    .iter()
                    .map(|i| info_dict(py, i))
                    .collect::<BridgeResult<Vec<_>>>()?;
                Ok(pyo3::IntoPyObjectExt::into_py_any(dicts, py)?)
            },
        ))
    }

    /// `action` on the client's runtime: `done(body, None)` or `done(None, exception)`.
    #[pyo3(signature = (kind, body, done, *, timeout=None))]
    fn submit_action(
        &self,
        kind: String,
        body: Vec<u8>,
        done: Done,
        timeout: Option<f64>,
    ) -> BridgeResult<PendingCall> {
        let client = self.client()?;
        let what = format!("action {kind:?}");
        Ok(spawn_call(
            &client.clone(),
            what,
            seconds(timeout)?,
            done,
            async move { client.action_async(&kind, body).await },
            |py, body: Vec<u8>| Ok(PyBytes::new(py, &body).into_any().unbind()),
        ))
    }

    /// `call` on the client's runtime: `done([array, ...], None)` or `done(None, exception)`.
    #[pyo3(signature = (kernel, args, params, done, *, timeout=None))]
    fn submit_call(
        &self,
        kernel: String,
        args: Vec<(String, Bound<'_, PyAny>)>,
        params: Option<&Bound<'_, PyDict>>,
        done: Done,
        timeout: Option<f64>,
    ) -> BridgeResult<PendingCall> {
        let client = self.client()?;
        let params = crate::call::params(&kernel, params)?;
        let inputs = call_inputs(&args)?;
        let what = format!("call {kernel:?}");
        Ok(spawn_call(
            &client.clone(),
            what,
            seconds(timeout)?,
            done,
            async move {
                let args: Vec<Arg<'_>> = inputs.iter().map(CallInput::arg).collect();
                client.call_async(&kernel, &args, &params).await
            },
            |py, outputs: Vec<ArrowTensor>| {
                let arrays = outputs
                    .iter()
                    .map(|t| tensor_to_numpy(py, t, true))
                    .collect::<BridgeResult<Vec<_>>>()?;
                Ok(pyo3::IntoPyObjectExt::into_py_any(arrays, py)?)
            },
        ))
    }

    /// `stream` on the client's runtime: `done(FlightStream, None)` or
    /// `done(None, exception)`.
    #[pyo3(signature = (name, done, *, columns=None, rows=None, batch_rows=None, timeout=None))]
    fn submit_stream(
        &self,
        name: String,
        done: Done,
        columns: Option<Vec<String>>,
        rows: Option<(usize, usize)>,
        batch_rows: Option<usize>,
        timeout: Option<f64>,
    ) -> BridgeResult<PendingCall> {
        let client = self.client()?;
        let timeout = seconds(timeout)?;
        let selection = Selection {
            columns,
            rows: rows.map(|(start, end)| start..end),
        };
        let what = format!("stream {name:?}");
        let opened = client.clone();
        Ok(spawn_call(
            &client.clone(),
            what,
            timeout,
            done,
            async move { opened.stream_async(&name, &selection, batch_rows).await },
            move |py, stream: ItemStream| {
                let stream = FlightStream::new(client, stream, timeout);
                Ok(pyo3::IntoPyObjectExt::into_py_any(stream, py)?)
            },
        ))
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

    /// Closes the connection; idempotent. Calls under way on other threads stop at once
    /// (each raises FlightCallError saying the client was closed).
    fn close(&self, py: Python<'_>) {
        let client = self.client.lock().ok().and_then(|mut c| c.take());
        if let Some(client) = &client {
            client.close();
        }
        // The runtime stops (joining its threads) without the GIL held.
        py.detach(move || drop(client));
    }
}

/// A kernel argument as Python passes it: `("array", x)` (ragged data too), `("stored",
/// name)` or `("stored_rows", (name, version, start, end))`.
enum CallInput {
    Array(ArrowTensor),
    Ragged(arrowbridge::RaggedTensor),
    Stored(String),
    StoredRows(String, Option<u64>, usize, usize),
}

impl CallInput {
    fn arg(&self) -> Arg<'_> {
        match self {
            CallInput::Array(tensor) => Arg::Array(tensor),
            CallInput::Ragged(ragged) => Arg::Ragged(ragged),
            CallInput::Stored(name) => Arg::Stored(name),
            CallInput::StoredRows(name, version, start, end) => Arg::StoredRows {
                name,
                version: *version,
                rows: (*start, *end),
            },
        }
    }
}

/// The arguments of a call, read while the GIL is held.
fn call_inputs(args: &[(String, Bound<'_, PyAny>)]) -> BridgeResult<Vec<CallInput>> {
    args.iter()
        .map(|(kind, value)| {
            Ok(match kind.as_str() {
                "stored" => CallInput::Stored(value.extract()?),
                "stored_rows" => {
                    let (name, version, start, end) = value.extract()?;
                    CallInput::StoredRows(name, version, start, end)
                }
                // Ragged data (a list of arrays, an arrow.variable_shape_tensor) in one
                // buffer, as a ragged kernel takes it.
                _ => match arrowbridge_pyo3::internal::ragged::any_column(value)? {
                    Column::Tensor(tensor) => CallInput::Array(tensor),
                    Column::Ragged(parts) => CallInput::Ragged(match parts.as_slice() {
                        [one] => one.clone(),
                        _ => arrowbridge::RaggedTensor::concat(&parts)?,
                    }),
                },
            })
        })
        .collect()
}

/// The batches of a stored item as they arrive: `{name: array}` per batch.
#[pyclass(frozen, module = "arrowbridge._native", name = "FlightStream")]
pub struct FlightStream {
    open: ForkBound<StreamParts>,
    /// Set by `close`, which another caller may be waiting on the stream meanwhile.
    closed: Arc<AtomicBool>,
    form: &'static str,
    rows: usize,
    timeout: Option<Duration>,
    /// What its errors name: `stream "x"'s next batch`.
    what: String,
}

/// What a stream reads with: its connection, and where it is.
struct StreamParts {
    client: Arc<Client>,
    stream: Arc<tokio::sync::Mutex<Batches>>,
}

/// Where a stream is.
enum Batches {
    Open(Box<ItemStream>),
    /// Every batch was read.
    Ended,
    /// Closed before its end: reading on is an error, not an end.
    Closed,
}

impl Batches {
    /// The stream to read the next batch from: `None` at its end, an error once closed.
    fn open(&mut self) -> ClientResult<Option<&mut ItemStream>> {
        match self {
            Batches::Open(stream) => Ok(Some(stream)),
            Batches::Ended => Ok(None),
            Batches::Closed => Err(stream_closed()),
        }
    }

    /// After a read that gave `result`: the stream ended, or was closed meanwhile (it is
    /// dropped once the batch is in).
    fn settle(&mut self, closed: &AtomicBool, result: &ClientResult<Option<Item>>) {
        if closed.load(Ordering::Acquire) {
            *self = Batches::Closed;
        } else if matches!(result, Ok(None)) {
            *self = Batches::Ended;
        }
    }
}

/// Reading a stream closed before its end (a `FlightCallError`: a cancelled call).
fn stream_closed() -> ClientError {
    ClientError::Remote {
        code: tonic::Code::Cancelled,
        kind: None,
        message: "the stream was closed before its end; its remaining batches were not read".into(),
    }
}

impl FlightStream {
    fn new(client: Arc<Client>, stream: ItemStream, timeout: Option<Duration>) -> Self {
        FlightStream {
            form: stream.form().name(),
            rows: stream.rows(),
            what: format!("{}'s next batch", stream.what()),
            open: ForkBound::new(StreamParts {
                client,
                stream: Arc::new(tokio::sync::Mutex::new(Batches::Open(Box::new(stream)))),
            }),
            closed: Arc::default(),
            timeout,
        }
    }
}

/// An item form by name ("array", "dict"; anything else is a table).
fn item_form(form: &str) -> ItemForm {
    match form {
        "array" => ItemForm::Array,
        "dict" => ItemForm::Dict,
        _ => ItemForm::Table,
    }
}

/// The error of a stream or put used by two callers at once.
fn busy(what: &str) -> arrowbridge::Error {
    arrowbridge::Error::invalid(what, "used by two callers at once; wait for the other")
}

#[pymethods]
impl FlightStream {
    /// The form the item was put in.
    #[getter]
    fn form(&self) -> &'static str {
        self.form
    }

    /// The rows the stream carries in all.
    #[getter]
    fn rows(&self) -> usize {
        self.rows
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> BridgeResult<Option<Bound<'py, PyDict>>> {
        no_panic("stream", || {
            let StreamParts { client, stream } = self.open.get("the stream")?;
            let mut guard = stream
                .try_lock()
                .map_err(|_| BridgeError::from(busy("stream")))?;
            let next = match guard.open().map_err(client_error)? {
                Some(stream) => limited(py, self.timeout, || client.next_batch(stream)),
                None => Ok(None),
            };
            guard.settle(&self.closed, &next);
            match next.map_err(client_error)? {
                Some(item) => Ok(Some(arrays(py, &item.columns, true)?)),
                None => Ok(None),
            }
        })
    }

    /// Fetches the next batch on the client's runtime: `done({name: array} | None, None)`
    /// (`None` at the end), or `done(None, exception)`.
    fn submit_next(&self, done: Done) -> BridgeResult<PendingCall> {
        let StreamParts { client, stream } = self.open.get("the stream")?;
        let limit = self.timeout.or(client.timeout());
        let (client, state, closed) = (client.clone(), stream.clone(), self.closed.clone());
        let call = format!("{} at {}", self.what, client.location());
        Ok(spawn_call(
            &client.clone(),
            self.what.clone(),
            // The batch's own deadline, below: a wait that runs out leaves the batch's fetch
            // for the next read, and says so.
            Some(Duration::MAX),
            done,
            async move {
                let fetch = async move {
                    let mut guard = state
                        .try_lock_owned()
                        .map_err(|_| ClientError::Local(busy("stream")))?;
                    let next = match guard.open()? {
                        Some(stream) => client.next_batch_async(stream).await,
                        None => Ok(None),
                    };
                    guard.settle(&closed, &next);
                    next
                };
                match limit {
                    None => fetch.await,
                    Some(limit) => tokio::time::timeout(limit, fetch)
                        .await
                        .unwrap_or_else(|_| {
                            Err(ClientError::Timeout {
                                call,
                                limit,
                                kept: true,
                            })
                        }),
                }
            },
            |py, item: Option<arrowbridge_flight::Item>| match item {
                Some(item) => Ok(arrays(py, &item.columns, true)?.into_any().unbind()),
                None => Ok(py.None()),
            },
        ))
    }

    /// Stops the stream: batches fetched ahead are dropped, their streams reset; reading on
    /// raises. A batch another caller waits for meanwhile is delivered first.
    fn close(&self, py: Python<'_>) {
        self.closed.store(true, Ordering::Release);
        // In a forked child there is nothing of its own to stop.
        let Some(StreamParts { stream, .. }) = self.open.here() else {
            return;
        };
        if let Ok(mut guard) = stream.try_lock() {
            if matches!(*guard, Batches::Open(_)) {
                let taken = std::mem::replace(&mut *guard, Batches::Closed);
                drop(guard);
                py.detach(move || drop(taken));
            }
        }
    }
}

/// A put under way whose batches arrive one by one.
#[pyclass(frozen, module = "arrowbridge._native", name = "FlightPut")]
pub struct FlightPut {
    open: ForkBound<PutParts>,
}

/// What a put sends with: its connection, and the put (`None` once finished or aborted).
struct PutParts {
    client: Arc<Client>,
    put: Arc<tokio::sync::Mutex<Option<PutStream>>>,
}

/// The columns of a put: tensors, and ragged data (a list of arrays, one part per array,
/// each a view of it; an `arrow.variable_shape_tensor`), read while the GIL is held.
fn any_columns(arrays: &Bound<'_, PyList>) -> BridgeResult<Vec<Column>> {
    arrays
        .iter()
        .map(|a| arrowbridge_pyo3::internal::ragged::any_column_views(&a))
        .collect()
}

/// Named columns as [`Client::put_columns`] takes them. (A function, not a closure in the
/// async blocks that call it: rustc proves those `Send` only without closures over
/// references.)
fn any_column_refs(batch: &[(String, Column)]) -> Vec<(&str, &Column)> {
    batch.iter().map(|(n, c)| (n.as_str(), c)).collect()
}

fn put_over() -> ClientError {
    ClientError::Local(arrowbridge::Error::invalid(
        "put",
        "the put was already finished or aborted",
    ))
}

#[pymethods]
impl FlightPut {
    /// Sends the arrays (rows of the item) as its next batch.
    #[pyo3(signature = (names, arrays, *, timeout=None))]
    fn send(
        &self,
        py: Python<'_>,
        names: Vec<String>,
        arrays: &Bound<'_, PyList>,
        timeout: Option<f64>,
    ) -> BridgeResult<()> {
        no_panic("put", || {
            let timeout = seconds(timeout)?;
            let batch: Vec<(String, Column)> =
                names.into_iter().zip(any_columns(arrays)?).collect();
            let columns = any_column_refs(&batch);
            let PutParts { client, put } = self.open.get("the put")?;
            let mut guard = put.try_lock().map_err(|_| BridgeError::from(busy("put")))?;
            let Some(put) = guard.as_mut() else {
                return Err(client_error(put_over()));
            };
            let sent = limited(py, timeout, || client.put_columns_batch(put, &columns));
            if sent.is_err() {
                // A failed batch ends the put; nothing is stored.
                if let Some(put) = guard.take() {
                    client.abort_put(put);
                }
            }
            sent.map_err(client_error)
        })
    }

    /// Sends a batch on the client's runtime: `done(None, None)` once it is queued, or
    /// `done(None, exception)` (the put is then reset).
    #[pyo3(signature = (names, arrays, done, *, timeout=None))]
    fn submit_send(
        &self,
        names: Vec<String>,
        arrays: &Bound<'_, PyList>,
        done: Done,
        timeout: Option<f64>,
    ) -> BridgeResult<PendingCall> {
        let timeout = seconds(timeout)?;
        let batch: Vec<(String, Column)> = names.into_iter().zip(any_columns(arrays)?).collect();
        let PutParts { client, put } = self.open.get("the put")?;
        let (client, state) = (client.clone(), put.clone());
        Ok(spawn_call(
            &client.clone(),
            "put".to_string(),
            timeout,
            done,
            async move {
                let mut guard = state
                    .try_lock_owned()
                    .map_err(|_| ClientError::Local(busy("put")))?;
                let put = guard.as_mut().ok_or_else(put_over)?;
                let sent = client
                    .put_columns_batch_async(put, &any_column_refs(&batch))
                    .await;
                if sent.is_err() {
                    if let Some(put) = guard.take() {
                        client.abort_put(put);
                    }
                }
                sent
            },
            |py, ()| Ok(py.None()),
        ))
    }

    /// Ends the put: the server stores the batches as one version; the rows it acknowledged.
    #[pyo3(signature = (*, timeout=None))]
    fn finish(&self, py: Python<'_>, timeout: Option<f64>) -> BridgeResult<usize> {
        no_panic("put", || {
            let timeout = seconds(timeout)?;
            let PutParts { client, put } = self.open.get("the put")?;
            let put = put
                .try_lock()
                .map_err(|_| BridgeError::from(busy("put")))?
                .take()
                .ok_or_else(|| client_error(put_over()))?;
            limited(py, timeout, || client.finish_put(put)).map_err(client_error)
        })
    }

    /// Ends the put on the client's runtime: `done(rows, None)` or `done(None, exception)`.
    #[pyo3(signature = (done, *, timeout=None))]
    fn submit_finish(&self, done: Done, timeout: Option<f64>) -> BridgeResult<PendingCall> {
        let timeout = seconds(timeout)?;
        let PutParts { client, put } = self.open.get("the put")?;
        let (client, state) = (client.clone(), put.clone());
        Ok(spawn_call(
            &client.clone(),
            "put".to_string(),
            timeout,
            done,
            async move {
                let mut put = state.lock_owned().await.take().ok_or_else(put_over)?;
                client.finish_put_async(&mut put).await
            },
            |py, rows: usize| Ok(pyo3::IntoPyObjectExt::into_py_any(rows, py)?),
        ))
    }

    /// Abandons the put: its stream is reset and the server stores nothing; idempotent.
    fn abort(&self) {
        // In a forked child the put is the parent's, to abort or finish.
        let Some(PutParts { client, put }) = self.open.here() else {
            return;
        };
        if let Ok(mut guard) = put.try_lock() {
            if let Some(put) = guard.take() {
                client.abort_put(put);
            }
        }
    }
}

impl Drop for PutParts {
    fn drop(&mut self) {
        // A put neither finished nor aborted is reset (PutStream's own drop).
        if let Ok(mut guard) = self.put.try_lock() {
            guard.take();
        }
    }
}

/// A shard map as JSON text.
fn map_text(map: &arrowbridge_flight::shards::ShardMap) -> String {
    serde_json::to_string(map).expect("a shard map is serializable")
}

/// The schema (an IPC stream, as `info` gives it) and the map (JSON) of a sharded item's
/// `put_map`.
fn shard_map_parts(
    name: &str,
    schema_ipc: &[u8],
    map_json: &str,
) -> BridgeResult<(
    arrow_schema::SchemaRef,
    arrowbridge_flight::shards::ShardMap,
)> {
    let what = format!("the shard map of {name:?}");
    let schema = arrow_ipc::reader::StreamReader::try_new(schema_ipc, None)
        .map_err(|e| arrowbridge::Error::invalid(&what, format!("bad schema: {e}")))?
        .schema();
    let map = serde_json::from_str(map_json)
        .map_err(|e| arrowbridge::Error::invalid(&what, e.to_string()))?;
    Ok((schema, map))
}
