//! Calls of a background client ([`arrowbridge_flight::ClientOptions::background`]) for
//! asyncio: each runs as a task on the client's runtime and hands its result to a Python
//! callback from there (`arrowbridge.aio` turns that into an awaitable); no Python thread
//! waits for it.

use std::future::Future;
use std::time::Duration;

use arrowbridge_flight::{Client, ClientError, ClientResult};
use arrowbridge_pyo3::errors::BridgeResult;
use pyo3::prelude::*;

use crate::flight::client_error;

/// A call under way on a background client.
#[pyclass(frozen, module = "arrowbridge._native", name = "PendingCall")]
pub struct PendingCall {
    abort: tokio::task::AbortHandle,
}

#[pymethods]
impl PendingCall {
    /// Stops the call: its streams are reset and its callback is never called.
    fn cancel(&self) {
        self.abort.abort();
    }

    /// Whether the call has ended (its callback was called, or it was cancelled).
    #[getter]
    fn done(&self) -> bool {
        self.abort.is_finished()
    }
}

/// Runs `future` (the call `what`) on `client`'s runtime within `timeout` (else the
/// client's default); then, holding the GIL on the runtime's thread, calls
/// `done(result, None)` with `convert`'s Python value of its output, or
/// `done(None, exception)`. An exception `done` raises is reported as unraisable.
pub(crate) fn spawn_call<T, F, C>(
    client: &Client,
    what: String,
    timeout: Option<Duration>,
    done: Py<PyAny>,
    future: F,
    convert: C,
) -> PendingCall
where
    T: Send + 'static,
    F: Future<Output = ClientResult<T>> + Send + 'static,
    C: for<'py> FnOnce(Python<'py>, T) -> BridgeResult<Py<PyAny>> + Send + 'static,
{
    let limit = timeout.or(client.timeout());
    let task = client.spawn(async move {
        let result = match limit {
            Some(limit) => match tokio::time::timeout(limit, future).await {
                Ok(result) => result,
                Err(_) => Err(ClientError::Timeout { call: what, limit }),
            },
            None => future.await,
        };
        Python::attach(|py| {
            let outcome = result
                .map_err(client_error)
                .and_then(|value| convert(py, value))
                .map_err(PyErr::from);
            let args = match outcome {
                Ok(value) => (value, py.None()),
                Err(error) => (py.None(), error.into_value(py).into_any()),
            };
            if let Err(raised) = done.call1(py, args) {
                raised.write_unraisable(py, None);
            }
        });
    });
    PendingCall {
        abort: task.abort_handle(),
    }
}
