//! Calls of a background client ([`arrowbridge_flight::ClientOptions::background`]) for
//! asyncio. Each call runs as a task on the client's runtime; when it ends, its outcome is
//! queued in a [`Completions`] and, if the queue was empty, an eventfd is written. The event
//! loop watches that descriptor (`loop.add_reader`) and drains the queue on its own thread:
//! results become NumPy arrays there, with the GIL the loop already holds. The runtime's
//! thread never takes the GIL, and one wake-up of the loop settles every call that ended
//! meanwhile.

use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arrowbridge_flight::{Client, ClientError, ClientResult};
use arrowbridge_pyo3::BridgeResult;
use futures::FutureExt;
use pyo3::prelude::*;

use crate::flight::client_error;

/// How an ended call's output becomes a Python value (run on the loop's thread).
type Convert = Box<dyn for<'py> FnOnce(Python<'py>) -> BridgeResult<Py<PyAny>> + Send>;

/// The calls that ended and the descriptor that says so.
struct Queue {
    /// An eventfd: readable while calls wait in `ended`.
    wake: OwnedFd,
    ended: Mutex<Vec<(u64, Result<Convert, ClientError>)>>,
}

impl Queue {
    fn push(&self, token: u64, outcome: Result<Convert, ClientError>) {
        let was_empty = {
            let mut ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
            ended.push((token, outcome));
            ended.len() == 1
        };
        // One write per batch of outcomes: written after the outcome is queued, so a drain
        // that follows the wake-up finds it.
        if was_empty {
            self.signal();
        }
    }

    /// Makes the descriptor readable.
    fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to an eventfd this queue owns. An error
        // (a counter at its maximum) leaves the descriptor readable anyway.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

/// The outcomes of an asyncio client's calls, for its event loop (see the module).
#[pyclass(frozen, module = "arrowbridge._native", name = "Completions")]
pub struct Completions {
    queue: Arc<Queue>,
}

#[pymethods]
impl Completions {
    #[new]
    fn new() -> PyResult<Self> {
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(Completions {
            queue: Arc::new(Queue {
                // SAFETY: `fd` was just opened and is owned by nothing else.
                wake: unsafe { OwnedFd::from_raw_fd(fd) },
                ended: Mutex::default(),
            }),
        })
    }

    /// The descriptor to watch for readability.
    #[getter]
    fn fd(&self) -> i32 {
        self.queue.wake.as_raw_fd()
    }

    /// Up to `limit` of the calls that ended since the last drain: `(token, value, None)`
    /// or `(token, None, exception)` each. When more are left, the descriptor stays
    /// readable (the loop drains them on its next turn, after what else waits).
    fn drain<'py>(&self, py: Python<'py>, limit: usize) -> Vec<(u64, Py<PyAny>, Py<PyAny>)> {
        let mut counter = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer from the eventfd this object
        // owns; non-blocking, so an empty counter returns EAGAIN at once.
        unsafe {
            libc::read(
                self.queue.wake.as_raw_fd(),
                counter.as_mut_ptr().cast(),
                counter.len(),
            )
        };
        let ended: Vec<_> = {
            let mut queued = self
                .queue
                .ended
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let taken = queued.len().min(limit);
            let ended = queued.drain(..taken).collect();
            if !queued.is_empty() {
                self.queue.signal();
            }
            ended
        };
        ended
            .into_iter()
            .map(|(token, outcome)| {
                let value = outcome
                    .map_err(client_error)
                    .and_then(|convert| convert(py))
                    .map_err(PyErr::from);
                match value {
                    Ok(value) => (token, value, py.None()),
                    Err(error) => (token, py.None(), error.into_value(py).into_any()),
                }
            })
            .collect()
    }
}

/// Where a call's outcome goes: a queue and the call's token in it (Python passes
/// `(completions, token)`).
pub(crate) type Done = (Py<Completions>, u64);

/// A call under way on a background client.
#[pyclass(frozen, module = "arrowbridge._native", name = "PendingCall")]
pub struct PendingCall {
    abort: tokio::task::AbortHandle,
}

#[pymethods]
impl PendingCall {
    /// Stops the call: its streams are reset and it queues no outcome.
    fn cancel(&self) {
        self.abort.abort();
    }

    /// Whether the call has ended (its outcome was queued, or it was cancelled).
    #[getter]
    fn done(&self) -> bool {
        self.abort.is_finished()
    }
}

/// Runs `future` (the call `what`) on `client`'s runtime within `timeout` (else the
/// client's default), and queues its outcome for `done`: `convert`, which makes the Python
/// value of its output on the loop's thread, or its error.
pub(crate) fn spawn_call<T, F, C>(
    client: &Client,
    what: String,
    timeout: Option<Duration>,
    done: Done,
    future: F,
    convert: C,
) -> PendingCall
where
    T: Send + 'static,
    F: Future<Output = ClientResult<T>> + Send + 'static,
    C: for<'py> FnOnce(Python<'py>, T) -> BridgeResult<Py<PyAny>> + Send + 'static,
{
    let limit = timeout.or(client.timeout());
    let (completions, token) = done;
    let queue = completions.get().queue.clone();
    let location = client.location().to_string();
    let task = client.spawn(async move {
        // A panic is the call's error, not a future that never resolves.
        let caught = {
            let what = what.clone();
            async move {
                std::panic::AssertUnwindSafe(future)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| {
                        Err(ClientError::Local(arrowbridge::Error::invalid(
                            what,
                            format!(
                                "internal error (a Rust panic, please report it): {}",
                                arrowbridge::panic_message(panic.as_ref())
                            ),
                        )))
                    })
            }
        };
        let call = what.clone();
        let result = match limit {
            Some(limit) => match tokio::time::timeout(limit, caught).await {
                Ok(result) => result,
                Err(_) => Err(ClientError::Timeout {
                    call: what,
                    limit,
                    kept: false,
                }),
            },
            None => caught.await,
        };
        let outcome = (result.map_err(|e| e.at(&call, &location)))
            .map(|value| -> Convert { Box::new(move |py| convert(py, value)) });
        queue.push(token, outcome);
        // The Python object is released without the GIL: pyo3 defers its decref.
        drop(completions);
    });
    PendingCall {
        abort: task.abort_handle(),
    }
}
